"""LightningDiT backbones for cascaded sampling (network, LowDiff retrofit, flow denoiser, VAE decoder)."""
