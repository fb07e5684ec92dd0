"""Numbers of the file format (docs/FORMAT.md): GGUF framing, our SQ4 type id, ggml type ids."""
from __future__ import annotations

from gguf import GGMLQuantizationType

SQ4_TYPE_ID = 0x5130  # 20784: far above ggml's range so future ggml types cannot collide

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
SUPPORTED_VERSIONS = (2, 3)  # v2 and v3 share the layout (64-bit counts); v1 is not supported

TYPE_F32 = int(GGMLQuantizationType.F32)
TYPE_F16 = int(GGMLQuantizationType.F16)
TYPE_Q4_0 = int(GGMLQuantizationType.Q4_0)
TYPE_Q4_1 = int(GGMLQuantizationType.Q4_1)
TYPE_Q8_0 = int(GGMLQuantizationType.Q8_0)
TYPE_I8 = int(GGMLQuantizationType.I8)
TYPE_I16 = int(GGMLQuantizationType.I16)
TYPE_I32 = int(GGMLQuantizationType.I32)
TYPE_BF16 = int(GGMLQuantizationType.BF16)

FORMAT_VERSION = 1  # specquant.version this code writes and the newest it reads

