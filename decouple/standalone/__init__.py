"""Standalone export: a converted model written out as readable Python source plus weights that need only torch.

``exporter.py`` (:func:`export_source`: files, manifest, checks), ``module_source.py`` (one
``nn.Module`` as a class definition), ``source_writer.py`` (names, literals and copied source).
"""

from .exporter import ExportedFile, ExportResult, export_source

__all__ = ["export_source", "ExportResult", "ExportedFile"]
