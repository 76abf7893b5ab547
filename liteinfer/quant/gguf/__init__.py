"""quant/gguf"""
