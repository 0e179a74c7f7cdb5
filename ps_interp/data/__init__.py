"""Probe data: the ProbeSet type, the built-in ten-language set, external loaders and
FigStep-style typographic images.

Example:
    >>> from ps_interp.data import probes
    >>> ps = probes(langs=["en", "zh"], modalities=("text", "typo"))
"""
from ps_interp.data.builtin import LANG_NAMES, LANGS, RESOURCE_LEVEL, probes
from ps_interp.data.loaders import load_probes
from ps_interp.data.probes import ProbeItem, ProbeSet
from ps_interp.data.typography import render_list_image, render_phrase_image

__all__ = [
    "LANGS",
    "LANG_NAMES",
    "RESOURCE_LEVEL",
    "ProbeItem",
    "ProbeSet",
    "load_probes",
    "probes",
    "render_list_image",
    "render_phrase_image",
]
