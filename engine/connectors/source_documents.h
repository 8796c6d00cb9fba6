/*
 * source_documents.h - the documents $source (source_documents.c), the
 * catalog's $source without a connection: what its parsed options hold,
 * for a caller that feeds the documents itself (the pipeline tests).
 */
#ifndef ASPEN_ENGINE_CONNECTORS_SOURCE_DOCUMENTS_H
#define ASPEN_ENGINE_CONNECTORS_SOURCE_DOCUMENTS_H

#include "runtime/pipeline.h"

/* The literal array of a parsed documents $source `spec`; NULL when its
 * documents are an expression (evaluated when it runs) or `spec` is
 * another kind's. Valid as long as the pipeline. Any thread. */
const bson_t *aspen__source_documents_array(const aspen_source_spec_t *spec);

#endif /* ASPEN_ENGINE_CONNECTORS_SOURCE_DOCUMENTS_H */
