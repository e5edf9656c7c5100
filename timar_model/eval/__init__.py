"""Evaluation: DualTalk metrics, streaming evaluation, baselines, bag evaluation, benchmarks, model card."""
