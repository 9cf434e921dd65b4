"""The camera stage: frame sources, person detector, tracker adapter use, tracklet builder, drawing."""
