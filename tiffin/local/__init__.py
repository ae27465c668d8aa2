"""The single-machine platform: `tiffin up`'s process supervisor, local autoscaler and embedded Redis."""
