"""Airflow integration (install the ``airflow`` extra): a hook / trigger / sensor / operator split as in
Airflow's provider packages, and DAGs generated from YAML (`albert_batch.airflow.dags`).

    InputPartitionSensor  ->  RayBatchJobOperator  ->  ValidatePartitionOperator  ->  PublishPartitionOperator
    (InputPartitionTrigger)   (RayJobTrigger)
"""
