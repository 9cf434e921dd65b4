"""The matching stage: topology, gallery, matcher, ordered intake and the matcher worker."""
