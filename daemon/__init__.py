"""kdsignal's daemon package: the live service, replay, and (in ``daemon.training``) offline distillation."""

__version__ = "0.1.0"
