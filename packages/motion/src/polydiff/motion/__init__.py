"""polydiff.motion: human motion diffusion (HumanML3D features, MDM, editing, T2M metrics)."""
