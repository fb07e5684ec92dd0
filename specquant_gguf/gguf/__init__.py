"""GGUF files with the SpecQuant SQ4 tensor type (docs/FORMAT.md).

    constants  the numbers of the format (type ids, alignment, versions)
    types      one entry per weight type: block sizes; SQ4 packing; payload classes
    writer     ModelWriter, the only code that writes GGUF files
    reader     read_model / ModelFile, the strict reader
    vocab      a `tokenizers` tokenizer built from a file's tokenizer.* metadata
    describe   the metadata and tensor table of a file, as `specquant inspect` prints it
"""
from __future__ import annotations

from .constants import (ALIGNMENT, FORMAT_VERSION, GGUF_MAGIC, GGUF_VERSION, SQ4_TYPE_ID, SUPPORTED_VERSIONS, TYPE_BF16,
                        TYPE_F16, TYPE_F32, TYPE_I8, TYPE_I16, TYPE_I32, TYPE_Q4_0, TYPE_Q4_1, TYPE_Q8_0)
from .reader import ModelFile, TensorInfo, read_model
from .types import (Payload, Q8_0Weight, RawTensor, SQ4Weight, block_info, pack_sq4, sq4_block_bytes, type_name,
                    unpack_sq4)
from .writer import ModelWriter

__all__ = ["ALIGNMENT", "FORMAT_VERSION", "GGUF_MAGIC", "GGUF_VERSION", "SQ4_TYPE_ID", "SUPPORTED_VERSIONS",
           "TYPE_BF16", "TYPE_F16", "TYPE_F32", "TYPE_I8", "TYPE_I16", "TYPE_I32", "TYPE_Q4_0", "TYPE_Q4_1",
           "TYPE_Q8_0", "ModelFile", "TensorInfo", "read_model", "Payload", "Q8_0Weight", "RawTensor", "SQ4Weight",
           "block_info", "pack_sq4", "sq4_block_bytes", "type_name", "unpack_sq4", "ModelWriter"]
