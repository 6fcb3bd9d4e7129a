"""Training jobs (``training_jobs``) and the verdict of each drift check
(``drift_reports.verdict``; rows checked before it existed get ``drift`` or ``none`` from
``drifted``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('training_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('dataset_version', sa.String(length=64), nullable=True),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('max_epochs', sa.Integer(), nullable=True),
    sa.Column('progress', sa.Double(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('model_version', sa.String(length=16), nullable=True),
    sa.Column('reused', sa.Boolean(), nullable=False),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_training_jobs_model_name'), ['model_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_queued_at'), ['queued_at'], unique=False)

    with op.batch_alter_table('drift_reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verdict', sa.String(length=16), nullable=False,
                                      server_default='none'))
    op.execute("UPDATE drift_reports SET verdict = 'drift' WHERE drifted")



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('drift_reports', schema=None) as batch_op:
        batch_op.drop_column('verdict')

    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_jobs_queued_at'))
        batch_op.drop_index(batch_op.f('ix_training_jobs_model_name'))

    op.drop_table('training_jobs')
