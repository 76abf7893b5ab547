"""quant/onnx"""
