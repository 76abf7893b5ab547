"""GGUF LLM quantization through llama.cpp's own quantizer: uniform types, the importance
matrix, sensitivity-driven mixed plans saved as recipes, GPTQ codes on llama.cpp's grid and
AWQ-style scales folded in first."""
