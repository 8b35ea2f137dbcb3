#ifndef LLMTAP_CZEROMQ_SHIM_H
#define LLMTAP_CZEROMQ_SHIM_H

#include <errno.h>
#include <zmq.h>

#endif
