"""SpecQuant-GGUF: W4A4 LLM inference in GGUF files with a native C runtime.

Running a converted model needs only numpy, cffi and the built library (no torch):

    from specquant_gguf import Model
    m = Model("smol.sq4.gguf")

The package by role (imports flow one way: cli -> convert / eval -> runtime -> gguf / arch -> errors):
    errors.py  arch.py  progress.py   exceptions; the architecture registry; the progress bar
    gguf/      the file format: constants, weight types, the writer, the strict reader
    convert/   the converter (torch)
    runtime/   the native runtime through cffi: Model, generation, chat
    eval/      perplexity and zero-shot accuracy through one scoring protocol
    cli/       the `specquant` command: argparse and run() only
"""
__version__ = "0.1.0"

__all__ = ["Model", "__version__"]


def __getattr__(name: str):
    # Lazy: importing the converter must not need the native library, and vice versa.
    if name == "Model":
        from .runtime.model import Model
        return Model
    raise AttributeError(name)
