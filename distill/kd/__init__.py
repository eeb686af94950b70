"""Distillation methods beyond Hinton KD and DKD (SPEC 4): their losses (`logit_losses`,
`feature_losses`), feature taps on any registry model (`taps`), MLKD's strong view (`views`),
the objective that owns a method's trainable modules (`objective`) and the methods table
(`table`). Nothing is imported here: the data loader imports `views` alone.
"""
