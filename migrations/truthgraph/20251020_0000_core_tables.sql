-- revision: 20251020_0000
-- down_revision:
-- message: core tables

-- +upgrade
-- gen_random_uuid() is built into PostgreSQL 13+, so pgcrypto is not needed.

-- Where claims and evidence come from.
CREATE TABLE sources (
    id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id         text        NOT NULL,
    source_type       text        NOT NULL,
    url               text,
    title             text,
    publisher         text,
    published_at      timestamptz,
    -- Prior trust in the source, 0 (unreliable) .. 1 (authoritative); NULL = unknown.
    reliability_score real,
    metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_sources PRIMARY KEY (id),
    -- NULL urls (manual / uploaded sources) are distinct, so only real urls are deduplicated.
    CONSTRAINT uq_sources_tenant_url UNIQUE (tenant_id, url),
    CONSTRAINT ck_sources_tenant_id_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT ck_sources_source_type CHECK (
        source_type IN ('web', 'document', 'dataset', 'api', 'manual')
    ),
    CONSTRAINT ck_sources_url_not_blank CHECK (url IS NULL OR btrim(url) <> ''),
    CONSTRAINT ck_sources_reliability_range CHECK (
        reliability_score IS NULL OR (reliability_score >= 0 AND reliability_score <= 1)
    ),
    CONSTRAINT ck_sources_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT ck_sources_updated_after_created CHECK (updated_at >= created_at)
);

CREATE INDEX ix_sources_tenant_created
    ON sources (tenant_id, created_at DESC);

-- The statements to verify.
CREATE TABLE claims (
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id  text        NOT NULL,
    text       text        NOT NULL,
    -- Where the claim was found, if anywhere; the claim outlives its source row.
    source_id  uuid,
    status     text        NOT NULL DEFAULT 'pending',
    language   text,
    metadata   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_claims PRIMARY KEY (id),
    CONSTRAINT fk_claims_source FOREIGN KEY (source_id)
        REFERENCES sources (id) ON DELETE SET NULL,
    CONSTRAINT ck_claims_tenant_id_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT ck_claims_text_not_blank CHECK (btrim(text) <> ''),
    CONSTRAINT ck_claims_status CHECK (
        status IN ('pending', 'processing', 'verified', 'failed')
    ),
    CONSTRAINT ck_claims_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT ck_claims_updated_after_created CHECK (updated_at >= created_at)
);

-- Query paths: a tenant's claims newest first, the work queue by status,
-- and the FK side of sources (ON DELETE SET NULL must find the rows).
CREATE INDEX ix_claims_tenant_created
    ON claims (tenant_id, created_at DESC);
CREATE INDEX ix_claims_tenant_status_created
    ON claims (tenant_id, status, created_at);
CREATE INDEX ix_claims_source_id
    ON claims (source_id)
    WHERE source_id IS NOT NULL;

-- Evidence passages. Deliberately independent of claims: one passage can bear
-- on many claims, and the claim/evidence link is made by the NLI results
-- (revision 20251025_0000).
CREATE TABLE evidence (
    id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id    text        NOT NULL,
    content      text        NOT NULL,
    source_id    uuid,
    source_url   text,
    retrieved_at timestamptz,
    metadata     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_evidence PRIMARY KEY (id),
    CONSTRAINT fk_evidence_source FOREIGN KEY (source_id)
        REFERENCES sources (id) ON DELETE SET NULL,
    CONSTRAINT ck_evidence_tenant_id_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT ck_evidence_content_not_blank CHECK (btrim(content) <> ''),
    CONSTRAINT ck_evidence_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT ck_evidence_updated_after_created CHECK (updated_at >= created_at)
);

CREATE INDEX ix_evidence_tenant_created
    ON evidence (tenant_id, created_at DESC);
CREATE INDEX ix_evidence_source_id
    ON evidence (source_id)
    WHERE source_id IS NOT NULL;

-- +downgrade
-- Reverse order of creation: evidence and claims reference sources.
DROP TABLE evidence;
DROP TABLE claims;
DROP TABLE sources;
