"""geolrm-bench: render, voxelize, reconstruct and evaluate under the GeoLRM protocols."""

__version__ = "0.1.0"
