-- revision: 0001
-- down_revision:
-- message: memory_shards table with pgvector embedding
-- lint-ignore: prefer-bigint-over-int -- access_count counts the reads of one memory shard: 2^31 is out of reach

-- +upgrade
-- gen_random_uuid() is built into PostgreSQL 13+, so pgcrypto is not needed.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE memory_shards (
    id               uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id        text        NOT NULL,
    agent_id         text        NOT NULL,
    -- NULL for long-term memories that do not belong to one conversation.
    session_id       text,
    content          text        NOT NULL,
    -- NULL until the embedding worker has processed the shard.
    embedding        vector(${EMBEDDING_DIM}),
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    importance       real        NOT NULL DEFAULT 0.5,
    access_count     integer     NOT NULL DEFAULT 0,
    last_accessed_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_memory_shards PRIMARY KEY (id),
    CONSTRAINT ck_memory_shards_tenant_id_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT ck_memory_shards_agent_id_not_blank CHECK (btrim(agent_id) <> ''),
    CONSTRAINT ck_memory_shards_content_not_blank CHECK (btrim(content) <> ''),
    CONSTRAINT ck_memory_shards_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT ck_memory_shards_importance_range CHECK (importance >= 0 AND importance <= 1),
    CONSTRAINT ck_memory_shards_access_count_nonneg CHECK (access_count >= 0),
    CONSTRAINT ck_memory_shards_updated_after_created CHECK (updated_at >= created_at)
);

-- Query paths: recent memories of a tenant, of one agent, of one session,
-- and the "most important first" recall of an agent.
CREATE INDEX ix_memory_shards_tenant_created
    ON memory_shards (tenant_id, created_at DESC);
CREATE INDEX ix_memory_shards_tenant_agent_created
    ON memory_shards (tenant_id, agent_id, created_at DESC);
CREATE INDEX ix_memory_shards_tenant_session_created
    ON memory_shards (tenant_id, session_id, created_at DESC)
    WHERE session_id IS NOT NULL;
CREATE INDEX ix_memory_shards_tenant_agent_importance
    ON memory_shards (tenant_id, agent_id, importance DESC);

-- +downgrade
-- The vector extension is deliberately NOT dropped: other tables, other apps
-- or other revisions in the same database may use the vector type, and
-- dropping it would fail (or cascade) on them. CREATE EXTENSION IF NOT EXISTS
-- above makes the re-upgrade a no-op for it.
DROP TABLE memory_shards;
