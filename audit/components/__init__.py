"""Where in the model a finding is carried: head/MLP decomposition of the pooled output
(:mod:`.decompose`), mean-ablation effects with bootstrap intervals and the test against random
heads (:mod:`.ablate`), the roles of heads in words (:mod:`.roles`)."""

from audit.components.decompose import Decomposition, decompose, decompose_batches

__all__ = ["Decomposition", "decompose", "decompose_batches"]
