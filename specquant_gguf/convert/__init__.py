"""The converter (torch): model sources -> calibration -> per-block smoothing, rotation, spectral
split and int4 quantization -> a GGUF file.

    hub        short names and downloads -> a local path
    sources    HF folders and GGUF files, read block by block (hf_vocab: their tokenizer metadata)
    calibrate  calibration text and per-block activation statistics
    forward    a small PyTorch forward pass over blocks (calibration, errors)
    smooth / rotation / spectral / quantize   the primitives of the method
    recipe     what a --method / --preset means; block: one block quantized; qlinear: its linears
    driver     the whole conversion, block by block, streamed to the writer
Importing this package does not import torch (the command line checks options first).
"""
