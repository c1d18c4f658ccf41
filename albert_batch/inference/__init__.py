"""ALBERT models and the predictors that run them:

    models          resolve a model location (folder, s3:// prefix, hub id), check it, load it
    albert          ALBERT and its two task heads in plain torch, as transformers computes them
    predictor       the base predictor: preprocess (tokenizer) / forward (token-budget batches) / postprocess
    classification  one label per text
    ner             entities per text, over windows for long texts
    predictors      the predictor of each task, built from a checked model
    device          device, precision and the bf16 kernel fusion

Importing this package imports nothing; torch is imported where a model is loaded. Running a model imports
no transformers (only a model folder without ``tokenizer.json`` loads transformers' tokenizer).
"""
