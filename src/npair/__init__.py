"""npair: a config-driven reproduction of Sohn (NIPS 2016), *Improved Deep Metric
Learning with Multi-class N-pair Loss Objective*."""

__version__ = "0.1.0"
