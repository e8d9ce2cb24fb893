"""The reference KLD of each K/V cache pair, measured on SmolLM2-135M: what pyturbo.fit
ranks pairs by when the model itself has not been measured (fit --measure)."""

# Mean KLD against the untransformed f16 cache, lower is better, with kv_transform="auto"
# (the default): docs/results/kld-smollm2-transforms.md (SmolLM2-135M, pyturbo.eval kld,
# c=512, 10 chunks of the Debian license texts; kld-smollm2.md has them without transforms).
# Update here when new measurements come in; a configuration not listed ranks
# after every listed one.
KLD_TABLE = {
    ("f16", "f16"): 0.0000,
    ("f16", "q8_0"): 0.0050,
    ("q8_0", "q8_0"): 0.0053,
    ("q5_0", "q5_0"): 0.0175,
    ("q4_0", "q4_0"): 0.0531,
    ("iq4_nl", "iq4_nl"): 0.0431,
    ("q8_0", "q4_0"): 0.0157,
    ("turbo4", "turbo4"): 0.0545,
    ("turbo3", "turbo3"): 0.1642,
    ("turbo2", "turbo2"): 0.6471,
    ("q8_0", "turbo4"): 0.0169,
    ("q8_0", "turbo3"): 0.0494,
    ("q8_0", "turbo2"): 0.1745,
    # the trellis-coded types: docs/results/kld-tcq-smollm2.md (the same model, chunks and
    # transforms; its scalar pairs are within 5% of the rows above)
    ("q8_0", "turbo3t"): 0.0329,
    ("q8_0", "turbo2t"): 0.1037,
    ("turbo3t", "turbo3t"): 0.1040,
    ("turbo2t", "turbo2t"): 0.3841,
}
REFERENCE_SOURCE = "reference: SmolLM2-135M"
