"""Label-free performance estimates of classification champions per drift window
(``performance_estimates``), with the realized figures once labels arrive.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('performance_estimates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=16), nullable=False),
    sa.Column('drift_record_id', sa.Integer(), nullable=True),
    sa.Column('window_since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=16), nullable=False),
    sa.Column('estimated', sa.JSON(), nullable=False),
    sa.Column('test_value', sa.Double(), nullable=True),
    sa.Column('drop', sa.Double(), nullable=False),
    sa.Column('drifted', sa.Boolean(), nullable=False),
    sa.Column('realized', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('realized_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('performance_estimates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_performance_estimates_model_name'), ['model_name'],
                              unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('performance_estimates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_performance_estimates_model_name'))
    op.drop_table('performance_estimates')
