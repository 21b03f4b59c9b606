"""The adaptation miniature: a small full-attention model pretrained from scratch, then adapted
to SWAA (ladder of settings, with and without LoRA). Commands: experiments/adaptation/README.md."""
