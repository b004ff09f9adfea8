/*
 * table_priv.h - the one door from snapshot.c into a fwd_table.
 *
 * The table's internals (slots, ranking lists) stay private to table.c;
 * a snapshot only needs the hash key, the backend addresses in list order
 * and the rows as list indices, copied so that it never points back into
 * the table.
 */
#ifndef FWD_TABLE_PRIV_H
#define FWD_TABLE_PRIV_H

#include "fwd_internal.h"

/* Copy t's hash key, backend addresses (list order) and rows (list indices) into st. */
void fwd_table_snap_fill(const struct fwd_table *t, struct fwd_snap_table *st);

#endif
