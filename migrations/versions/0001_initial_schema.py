"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 11:08:56.191105
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('feedback',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('generation_id', sa.Uuid(), nullable=False),
    sa.Column('label', sa.Float(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('request_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_feedback_idempotency_key'))
    )
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index('ix_feedback_generation_id_source', ['generation_id', 'source', 'created_at'], unique=False)

    op.create_table('tasks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('configured', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=True),
    sa.Column('last_evaluated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('recalibrate_not_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_tasks'))
    )
    op.create_table('webhooks',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('secret', sa.String(length=255), nullable=False),
    sa.Column('events', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=255), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('disabled_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhooks'))
    )
    op.create_table('alerts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('samples', sa.Integer(), nullable=True),
    sa.Column('consecutive', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['task'], ['tasks.name'], name=op.f('fk_alerts_task_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index('ix_alerts_state_started_at', ['state', 'started_at'], unique=False)
        batch_op.create_index('ix_alerts_task_started_at', ['task', 'started_at'], unique=False)
        batch_op.create_index('uq_alerts_one_open_per_rule_task', ['rule', 'task'], unique=True, sqlite_where=sa.text("state IN ('pending', 'firing')"), postgresql_where=sa.text("state IN ('pending', 'firing')"))

    op.create_table('calibrations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('temperature', sa.Float(), nullable=False),
    sa.Column('bias', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('metrics_before', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('metrics_after', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('n_train', sa.Integer(), nullable=False),
    sa.Column('n_holdout', sa.Integer(), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('device', sa.String(length=16), nullable=True),
    sa.Column('fit_seconds', sa.Float(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rescored_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['task'], ['tasks.name'], name=op.f('fk_calibrations_task_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibrations')),
    sa.UniqueConstraint('task', 'version', name=op.f('uq_calibrations_task_version'))
    )
    with op.batch_alter_table('calibrations', schema=None) as batch_op:
        batch_op.create_index('uq_calibrations_one_active_per_task', ['task'], unique=True, sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))

    op.create_table('generations',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('model', sa.String(length=256), nullable=True),
    sa.Column('endpoint', sa.String(length=16), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('partial', sa.Boolean(), nullable=False),
    sa.Column('prompt', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('prompt_sha256', sa.String(length=64), nullable=True),
    sa.Column('response_text', sa.Text(), nullable=True),
    sa.Column('response_sha256', sa.String(length=64), nullable=True),
    sa.Column('finish_reason', sa.String(length=32), nullable=True),
    sa.Column('token_count', sa.Integer(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('upstream_status', sa.SmallInteger(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('overhead_ms', sa.Float(), nullable=True),
    sa.Column('sampling', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('top_k', sa.SmallInteger(), nullable=True),
    sa.Column('logprobs', sa.LargeBinary().with_variant(postgresql.BYTEA(), 'postgresql'), nullable=True),
    sa.Column('answer_start', sa.Integer(), nullable=True),
    sa.Column('answer_end', sa.Integer(), nullable=True),
    sa.Column('top_margin', sa.Float(), nullable=True),
    sa.Column('repetition', sa.Float(), nullable=True),
    sa.Column('raw_confidence', sa.Float(), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('temperature', sa.Float(), nullable=False),
    sa.Column('calibration_version', sa.Integer(), nullable=True),
    sa.Column('rescored_confidence', sa.Float(), nullable=True),
    sa.Column('rescored_version', sa.Integer(), nullable=True),
    sa.Column('label', sa.Float(), nullable=True),
    sa.Column('labelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['task'], ['tasks.name'], name=op.f('fk_generations_task_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generations'))
    )
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.create_index('ix_generations_task_created_at', ['task', 'created_at'], unique=False)
        batch_op.create_index('ix_generations_task_labelled', ['task', 'created_at'], unique=False, sqlite_where=sa.text('label IS NOT NULL'), postgresql_where=sa.text('label IS NOT NULL'))

    op.create_table('metric_snapshots',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('evaluated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('n_generations', sa.Integer(), nullable=False),
    sa.Column('accuracy', sa.Float(), nullable=True),
    sa.Column('mean_confidence', sa.Float(), nullable=True),
    sa.Column('ece', sa.Float(), nullable=True),
    sa.Column('ece_low', sa.Float(), nullable=True),
    sa.Column('ece_high', sa.Float(), nullable=True),
    sa.Column('mce', sa.Float(), nullable=True),
    sa.Column('brier', sa.Float(), nullable=True),
    sa.Column('nll', sa.Float(), nullable=True),
    sa.Column('calibration_version', sa.Integer(), nullable=True),
    sa.Column('bins', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('signals', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['task'], ['tasks.name'], name=op.f('fk_metric_snapshots_task_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_metric_snapshots'))
    )
    with op.batch_alter_table('metric_snapshots', schema=None) as batch_op:
        batch_op.create_index('ix_metric_snapshots_task_evaluated_at', ['task', 'evaluated_at'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('webhook_id', sa.Integer(), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], name=op.f('fk_webhook_deliveries_webhook_id_webhooks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('message_id', name=op.f('uq_webhook_deliveries_message_id'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_webhook_deliveries_webhook_id_created_at', ['webhook_id', 'created_at'], unique=False)

    op.create_table('recalibration_jobs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('not_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('device', sa.String(length=16), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('calibration_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['calibration_id'], ['calibrations.id'], name=op.f('fk_recalibration_jobs_calibration_id_calibrations'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['task'], ['tasks.name'], name=op.f('fk_recalibration_jobs_task_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recalibration_jobs'))
    )
    with op.batch_alter_table('recalibration_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_recalibration_jobs_status_created_at', ['status', 'created_at'], unique=False)
        batch_op.create_index('ix_recalibration_jobs_task_created_at', ['task', 'created_at'], unique=False)
        batch_op.create_index('uq_recalibration_jobs_one_open_per_task', ['task'], unique=True, sqlite_where=sa.text("status IN ('queued', 'running')"), postgresql_where=sa.text("status IN ('queued', 'running')"))

    op.create_table('webhook_attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('attempted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['delivery_id'], ['webhook_deliveries.id'], name=op.f('fk_webhook_attempts_delivery_id_webhook_deliveries'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_attempts'))
    )
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_attempts_delivery_id'), ['delivery_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_attempts_delivery_id'))

    op.drop_table('webhook_attempts')
    with op.batch_alter_table('recalibration_jobs', schema=None) as batch_op:
        batch_op.drop_index('uq_recalibration_jobs_one_open_per_task', sqlite_where=sa.text("status IN ('queued', 'running')"), postgresql_where=sa.text("status IN ('queued', 'running')"))
        batch_op.drop_index('ix_recalibration_jobs_task_created_at')
        batch_op.drop_index('ix_recalibration_jobs_status_created_at')

    op.drop_table('recalibration_jobs')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_webhook_id_created_at')
        batch_op.drop_index('ix_webhook_deliveries_status_next_attempt_at')

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('metric_snapshots', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_snapshots_task_evaluated_at')

    op.drop_table('metric_snapshots')
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_index('ix_generations_task_labelled', sqlite_where=sa.text('label IS NOT NULL'), postgresql_where=sa.text('label IS NOT NULL'))
        batch_op.drop_index('ix_generations_task_created_at')

    op.drop_table('generations')
    with op.batch_alter_table('calibrations', schema=None) as batch_op:
        batch_op.drop_index('uq_calibrations_one_active_per_task', sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))

    op.drop_table('calibrations')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('uq_alerts_one_open_per_rule_task', sqlite_where=sa.text("state IN ('pending', 'firing')"), postgresql_where=sa.text("state IN ('pending', 'firing')"))
        batch_op.drop_index('ix_alerts_task_started_at')
        batch_op.drop_index('ix_alerts_state_started_at')

    op.drop_table('alerts')
    op.drop_table('webhooks')
    op.drop_table('tasks')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index('ix_feedback_generation_id_source')

    op.drop_table('feedback')
