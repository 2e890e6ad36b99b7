"""models: encoder registry, weights, necks, heads, segmenter, regimes (plain nn.Modules)."""
