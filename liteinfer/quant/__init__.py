"""Quantization, beside the serving stack: gguf/ (LLMs through llama.cpp's quantizer), onnx/
(ONNX models to ORT's block-quantized operators), the GPTQ loop both use (gptq.py) and the
`liteinfer quantize` command (cli.py)."""
