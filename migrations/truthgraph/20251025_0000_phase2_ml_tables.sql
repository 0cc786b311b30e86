-- revision: 20251025_0000
-- down_revision: 20251020_0000
-- message: phase2 ml tables
-- lint-ignore: prefer-bigint-over-int -- per-verdict evidence counts, bounded by the passages one verification run reads

-- +upgrade
CREATE EXTENSION IF NOT EXISTS vector;

-- One vector per (entity, model). Polymorphic (claims and evidence), so the
-- entity is referenced by type + id, without a foreign key; the application
-- deletes the embeddings of a deleted claim / evidence row.
CREATE TABLE embeddings (
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id   text        NOT NULL,
    entity_type text        NOT NULL,
    entity_id   uuid        NOT NULL,
    embedding   vector(${EMBEDDING_DIM}) NOT NULL,
    model_name  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_embeddings PRIMARY KEY (id),
    -- Also the index for "the embedding(s) of this entity" lookups.
    CONSTRAINT uq_embeddings_entity_model UNIQUE (entity_type, entity_id, model_name),
    CONSTRAINT ck_embeddings_tenant_id_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT ck_embeddings_entity_type CHECK (entity_type IN ('claim', 'evidence')),
    CONSTRAINT ck_embeddings_model_name_not_blank CHECK (btrim(model_name) <> '')
);

CREATE INDEX ix_embeddings_tenant_created
    ON embeddings (tenant_id, created_at DESC);

-- Natural-language-inference output: does this evidence entail, contradict or
-- say nothing about this claim. This is what links claims to evidence.
CREATE TABLE nli_results (
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id   text        NOT NULL,
    claim_id    uuid        NOT NULL,
    evidence_id uuid        NOT NULL,
    label       text        NOT NULL,
    confidence  real        NOT NULL,
    model_name  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_nli_results PRIMARY KEY (id),
    CONSTRAINT fk_nli_results_claim FOREIGN KEY (claim_id)
        REFERENCES claims (id) ON DELETE CASCADE,
    CONSTRAINT fk_nli_results_evidence FOREIGN KEY (evidence_id)
        REFERENCES evidence (id) ON DELETE CASCADE,
    -- Also serves "all NLI results of a claim" (claim_id is its first column).
    CONSTRAINT uq_nli_results_claim_evidence_model UNIQUE (claim_id, evidence_id, model_name),
    CONSTRAINT ck_nli_results_tenant_id_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT ck_nli_results_label CHECK (label IN ('entailment', 'contradiction', 'neutral')),
    CONSTRAINT ck_nli_results_confidence_range CHECK (confidence >= 0 AND confidence <= 1),
    CONSTRAINT ck_nli_results_model_name_not_blank CHECK (btrim(model_name) <> '')
);

-- The FK side of evidence (ON DELETE CASCADE) and "which claims does this passage bear on".
CREATE INDEX ix_nli_results_evidence_id
    ON nli_results (evidence_id);
CREATE INDEX ix_nli_results_tenant_created
    ON nli_results (tenant_id, created_at DESC);

-- Final verdict per verification run of a claim (a claim can be re-verified;
-- the latest row wins).
CREATE TABLE verification_results (
    id                         uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id                  text        NOT NULL,
    claim_id                   uuid        NOT NULL,
    verdict                    text        NOT NULL,
    confidence                 real        NOT NULL,
    reasoning                  text,
    supporting_evidence_count  integer     NOT NULL DEFAULT 0,
    refuting_evidence_count    integer     NOT NULL DEFAULT 0,
    neutral_evidence_count     integer     NOT NULL DEFAULT 0,
    pipeline_version           text,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_verification_results PRIMARY KEY (id),
    CONSTRAINT fk_verification_results_claim FOREIGN KEY (claim_id)
        REFERENCES claims (id) ON DELETE CASCADE,
    CONSTRAINT ck_verification_results_tenant_id_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT ck_verification_results_verdict CHECK (
        verdict IN ('supported', 'refuted', 'conflicting', 'insufficient_evidence')
    ),
    CONSTRAINT ck_verification_results_confidence_range CHECK (confidence >= 0 AND confidence <= 1),
    CONSTRAINT ck_verification_results_counts_nonneg CHECK (
        supporting_evidence_count >= 0
        AND refuting_evidence_count >= 0
        AND neutral_evidence_count >= 0
    )
);

-- Latest verdict of a claim (also the FK side of claims), a tenant's recent
-- verdicts, and dashboards by verdict.
CREATE INDEX ix_verification_results_claim_created
    ON verification_results (claim_id, created_at DESC);
CREATE INDEX ix_verification_results_tenant_created
    ON verification_results (tenant_id, created_at DESC);
CREATE INDEX ix_verification_results_tenant_verdict_created
    ON verification_results (tenant_id, verdict, created_at DESC);

-- +downgrade
-- Reverse order of creation. The vector extension is deliberately NOT dropped:
-- other apps or tables in the same database may use it, and CREATE EXTENSION
-- IF NOT EXISTS above makes the re-upgrade a no-op for it.
DROP TABLE verification_results;
DROP TABLE nli_results;
DROP TABLE embeddings;
