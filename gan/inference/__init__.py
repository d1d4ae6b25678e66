"""Using a trained generator: ``loading`` (checkpoint -> model) and ``enhance`` (files and arrays of
any length, rate, level and channel count, chunked = whole)."""
from gan.inference.enhance import Enhancer, output_paths
from gan.inference.loading import LoadedGenerator, load_generator, resolve_checkpoint

__all__ = ["Enhancer", "LoadedGenerator", "load_generator", "output_paths", "resolve_checkpoint"]
