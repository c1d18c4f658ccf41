"""Fine-tuning ALBERT on Ray Train (`albert-batch finetune`):

    config      FinetuneConfig, the typed settings
    data        labelled Parquet in, checked; training rows; length-bucketed batches
    bio         character spans to BIO token labels (NER)
    loop        what every Ray Train worker runs; scoring an epoch with the batch pipeline's predictor
    metrics     accuracy, macro-F1, entity precision/recall/F1
    model_init  ALBERT built from scratch, offline: a SentencePiece tokenizer and fresh weights
    finetune    `finetune`: the above, end to end, and the training report

Importing this package imports nothing; Ray, torch and transformers are imported where they are used.
"""
