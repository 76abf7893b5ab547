"""ONNX model quantization: MatMulNBits / GatherBlockQuantized blocks (RTN or GPTQ), int8
convolutions, and sensitivity-driven mixed plans checked against an accuracy floor."""
