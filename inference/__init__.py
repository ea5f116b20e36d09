"""Inference on a user's own image-caption pairs (infer.py): ``loading`` (checkpoint -> checked model, tokenizer,
stop words), ``pairs`` (image, caption, candidate faces -> the model's inputs, as the dataset builds them),
``results`` (model outputs -> the JSON result, with the evaluator's decision rules)."""
