"""The GeoLRM network: encoder, transformer, deformable attention, RoPE-3D, Gaussian head, rasterizers."""
