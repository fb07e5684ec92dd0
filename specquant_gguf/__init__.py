"""SpecQuant-GGUF: W4A4 LLM inference in GGUF files with a native C runtime.

Running a converted model needs only numpy, cffi and the built library (no torch):

    from specquant_gguf import Model
    m = Model("smol.sq4.gguf")
"""
__version__ = "0.1.0"

__all__ = ["Model", "__version__"]


def __getattr__(name: str):
    # Lazy: importing the converter must not need the native library, and vice versa.
    if name == "Model":
        from .runtime import Model
        return Model
    raise AttributeError(name)
