"""Tools for developing and demonstrating albert-batch, not used by a run:

    corpus      a seeded generator of a labelled demo corpus (reviews and news, sentiment, PER/LOC/ORG spans)
    vocabulary  its names, places, organisations and sentence templates
    local_ray   a token-authenticated Ray head on loopback, for `make airflow` and the tests
    s3_proxy    an HTTP proxy in front of an S3 endpoint (moto) that delays or fails requests as a real store
                can, and counts how many it holds at once, for the tests and benchmarks
"""
