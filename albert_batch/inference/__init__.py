"""ALBERT models and the predictors that run them:

    models          resolve a model location (folder, s3:// prefix, hub id), check it, load it
    predictor       the base predictor: preprocess (tokenizer) / forward (token-budget batches) / postprocess
    classification  one label per text
    ner             entities per text, over windows for long texts
    predictors      the predictor of each task, built from a checked model
    device          device, precision and the bf16 kernel fusion

Importing this package imports nothing; torch and transformers are imported where a model is loaded.
"""
