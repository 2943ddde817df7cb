"""Airflow DAG: the monthly corpus refresh, one task per step of ops/monthly_refresh.sh
(refresh → verify → tokenize → publish). docs/operations.md explains the layout and the exit codes.

Set the two variables below (or Airflow Variables) for your deployment. ``max_active_runs=1``
keeps two months from running at once (gristmill also refuses a second run into the same output).
"""

from __future__ import annotations

from datetime import datetime

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

ROOT = "/data/corpus"  # one directory per version, and CURRENT
CRAWL = "/data/crawl/{{ logical_date.strftime('%Y-%m') }}/*.warc.gz"
SCRIPT = "/opt/gristmill/ops/monthly_refresh.sh"
VERSION = "{{ logical_date.strftime('%Y-%m') }}"
STEPS = ("refresh", "verify", "tokenize", "publish")

with DAG(
    dag_id="gristmill_monthly_refresh",
    schedule="@monthly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1},
    tags=["gristmill"],
) as dag:
    tasks = [BashOperator(task_id=step, bash_command=f"{SCRIPT} {ROOT} '{CRAWL}' {VERSION} {step}") for step in STEPS]
    for upstream, downstream in zip(tasks, tasks[1:]):
        upstream >> downstream
