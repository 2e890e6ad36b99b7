"""data: dataset formats, synthetic scenes, transforms, subsets, taxonomy, checks."""
