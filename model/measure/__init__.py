"""Measures of a trained model: lm-evaluation-harness tasks (`harness`, through `lm_adapter`), bits per
byte on raw text (`bpb`, reading `texts`), and their commands (`cli`)."""
