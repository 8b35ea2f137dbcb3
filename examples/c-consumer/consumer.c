/*
 * A consumer of the LLMTap analysis wire in C: it binds a ZeroMQ PULL socket where sidecars send
 * (what llmtap-collector does), and prints one line per record. docs/wire.md is all it relies on.
 *
 *   llmtap-c-consumer [ENDPOINT] [COUNT]
 *
 * ENDPOINT defaults to tcp://0.0.0.0:7101 (any interface). With COUNT, it exits 0 after that many valid records.
 * A frame that is not a valid record is reported on stderr and skipped.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "analysis.pb-c.h"

static const char *outcome_name(Llmtap__Wire__V1__Outcome outcome) {
    switch (outcome) {
    case LLMTAP__WIRE__V1__OUTCOME__OUTCOME_COMPLETED: return "completed";
    case LLMTAP__WIRE__V1__OUTCOME__OUTCOME_CLIENT_ABORTED: return "client_aborted";
    case LLMTAP__WIRE__V1__OUTCOME__OUTCOME_UPSTREAM_ERROR: return "upstream_error";
    case LLMTAP__WIRE__V1__OUTCOME__OUTCOME_REJECTED: return "rejected";
    case LLMTAP__WIRE__V1__OUTCOME__OUTCOME_TIMEOUT: return "timeout";
    default: return "unspecified";
    }
}

static void print_record(const Llmtap__Wire__V1__Envelope *e) {
    printf("sidecar=%s boot=%s seq=%" PRIu64 " dropped_before=%" PRIu64 " ",
           e->sidecar_id, e->boot_id, e->seq, e->dropped_before);
    switch (e->record_case) {
    case LLMTAP__WIRE__V1__ENVELOPE__RECORD_REQUEST: {
        const Llmtap__Wire__V1__Request *r = e->request;
        printf("kind=request exchange=%s method=%s url=%s://%s%s app=%s tenant=%s headers=%zu body=%zu/%" PRIu64 "%s\n",
               r->exchange_id, r->method, r->scheme, r->host, r->path, r->app, r->tenant,
               r->n_headers, r->body.len, r->body_size, r->body_truncated ? " truncated" : "");
        break;
    }
    case LLMTAP__WIRE__V1__ENVELOPE__RECORD_STREAM_CHUNK: {
        const Llmtap__Wire__V1__StreamChunk *c = e->stream_chunk;
        printf("kind=stream_chunk exchange=%s index=%" PRIu64 " bytes=%zu\n", c->exchange_id, c->index, c->data.len);
        break;
    }
    case LLMTAP__WIRE__V1__ENVELOPE__RECORD_RESPONSE_DONE: {
        const Llmtap__Wire__V1__ResponseDone *d = e->response_done;
        printf("kind=response_done exchange=%s status=%u outcome=%s response_bytes=%" PRIu64 " chunks=%" PRIu64 "\n",
               d->exchange_id, d->status, outcome_name(d->outcome), d->response_bytes, d->response_chunks);
        break;
    }
    case LLMTAP__WIRE__V1__ENVELOPE__RECORD_HEARTBEAT: {
        const Llmtap__Wire__V1__Heartbeat *h = e->heartbeat;
        printf("kind=heartbeat published=%" PRIu64 " dropped=%" PRIu64 " mode=%s version=%s\n",
               h->published, h->dropped, h->mode, h->version);
        break;
    }
    default:
        printf("kind=unknown\n");
    }
}

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 ? argv[1] : "tcp://0.0.0.0:7101";
    long wanted = argc > 2 ? strtol(argv[2], NULL, 10) : -1;
    setvbuf(stdout, NULL, _IOLBF, 0);

    void *context = zmq_ctx_new();
    void *pull = zmq_socket(context, ZMQ_PULL);
    if (!pull || zmq_bind(pull, endpoint) != 0) {
        fprintf(stderr, "cannot bind %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }
    fprintf(stderr, "listening on %s\n", endpoint);

    long valid = 0;
    while (wanted < 0 || valid < wanted) {
        zmq_msg_t message;
        zmq_msg_init(&message);
        if (zmq_msg_recv(&message, pull, 0) < 0) {
            fprintf(stderr, "receive failed: %s\n", zmq_strerror(zmq_errno()));
            zmq_msg_close(&message);
            return 1;
        }
        const uint8_t *data = zmq_msg_data(&message);
        size_t size = zmq_msg_size(&message);
        int more = zmq_msg_more(&message);

        /* One frame: "LTW", the version byte (1), then a protobuf llmtap.wire.v1.Envelope. */
        if (more) {
            fprintf(stderr, "rejected: a record is one frame\n");
            while (more) {  /* drop the rest of the message */
                zmq_msg_close(&message);
                zmq_msg_init(&message);
                zmq_msg_recv(&message, pull, 0);
                more = zmq_msg_more(&message);
            }
        } else if (size < 4 || memcmp(data, "LTW", 3) != 0) {
            fprintf(stderr, "rejected: not an LLMTap frame (%zu bytes)\n", size);
        } else if (data[3] != 1) {
            fprintf(stderr, "rejected: wire version %u, this consumer reads 1\n", data[3]);
        } else {
            Llmtap__Wire__V1__Envelope *envelope = llmtap__wire__v1__envelope__unpack(NULL, size - 4, data + 4);
            if (!envelope) {
                fprintf(stderr, "rejected: the envelope does not decode\n");
            } else {
                print_record(envelope);
                llmtap__wire__v1__envelope__free_unpacked(envelope, NULL);
                valid++;
            }
        }
        zmq_msg_close(&message);
    }
    zmq_close(pull);
    zmq_ctx_term(context);
    return 0;
}
