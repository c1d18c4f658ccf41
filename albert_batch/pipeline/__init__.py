"""One batch run, in the order a row travels:

    inputs        check the corpus before any work; read it as a Ray dataset
    sizing        how many tokenizer and model actors, batch and forward-pass sizes
    stages        the tokenizer stage (CPU) and the model stage (GPU or CPU), Ray-shaped callables
    sink          write each batch's results into the run's staging folder
    publish       commit and publish each partition atomically; finish an interrupted publication
    validate      check a published partition as a careful consumer would (no Ray needed)
    runner        `run`: the above, end to end, with the row accounting and the manifest
    cluster       joining or starting Ray; a worker's error back as ours; package versions
    backpressure  how far each stage may run ahead of the next
    columns, heap helpers of the stages: Arrow list columns, returning freed memory

Importing this package imports nothing; each module imports Ray only where it needs it.
"""
