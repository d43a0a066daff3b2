/* p11mk keystore: LMDB's pages checked before LMDB is asked to write.
 *
 * LMDB trusts its data file. Reading a damaged file is made safe by the
 * fault frames (ks_fault.h): a read can only fault, and a fault is caught.
 * A write cannot be made safe that way: LMDB copies the pages it changes
 * into memory of its own, sized by the page, and lays nodes out by the
 * offsets and sizes the page's header and nodes give. A damaged header
 * (one edited field) makes that copy run past the end of the heap block,
 * which corrupts the application's heap before anything faults (seen:
 * logins on a key store with one page's mp_upper edited ended in glibc's
 * "double free or corruption").
 *
 * So before each write, ks_lmdb.c has this file read the pages LMDB will
 * copy or follow, in the committed tree the write transaction began from,
 * and refuse the write (KS_ECORRUPT, nothing written) when one of them is
 * not a page LMDB could have written:
 *   - when a write transaction begins: the main table (the named tables'
 *     records, rewritten at every commit) and the free-page table (read
 *     when LMDB takes pages for reuse, rewritten at every commit), whole;
 *   - for each record put or deleted: the path from the table's root to the
 *     record's leaf, for a delete each page's neighbours on both sides
 *     (LMDB merges a page that falls below a quarter full with one of
 *     them, or moves a node from one; a put's split makes a new page), the
 *     record's overflow pages' header, and for a table of duplicates the
 *     same in the record's own tree of values (or all of it when every
 *     value goes);
 *   - a table emptied at once: all of it.
 * A page is accepted when its number is the one its header carries, it
 * holds a node at least (LMDB frees a page its last node leaves), its
 * flags are exactly the kind its place in the tree calls for (a committed
 * page never carries P_DIRTY: with it LMDB would write into the map), its
 * pointer array and its free space lie inside it, every node lies inside
 * it apart from the others (LMDB keeps them side by side; one grown over
 * its neighbour moved past LMDB's heap copy in a delete) with a size that
 * fits, flags the table allows and page numbers inside the file, and
 * together they fill the room from mp_upper to the page's end (LMDB keeps
 * them packed: a lowered mp_lower hides records from every walk); a
 * table's record must carry the flags LMDB gives that kind of table.
 * A backup checks every page first (LMDB's compacting walk copies branch
 * pages by their bounds, as a write does).
 *
 * The format is LMDB 0.9's (data version 1, 64-bit page numbers, no
 * MDB_VL32), the one Debian 12's liblmdb writes; the layout is read from
 * the file, never from LMDB's private structures.
 *
 * What this does not catch (README, threat model): a page changed between
 * the check and LMDB's copy of it (microseconds, by someone racing the
 * writer); chains of merges within one transaction that reach a page two
 * places away from a checked path; a free-page list that names a page
 * still in use, or an overflow count raised past its value's (LMDB would
 * reuse those pages: the records there then fail their authentication,
 * reported; LMDB leaves larger counts itself when a value shrinks within
 * a transaction); verify finds those (lp_check_free_unused), writers do
 * not. All reads here must run in a fault frame. */
#ifndef P11MK_KS_LMDB_PAGES_H
#define P11MK_KS_LMDB_PAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where a meta page (page 0 or 1) keeps its transaction id: the page
 * header's 16 bytes, then MDB_meta's magic, version, address, map size, the
 * two tables' records and the last page number before it. */
#define LP_META_TXNID 144

typedef struct lp_view {
    const uint8_t *map;  /* the data file's map */
    const uint8_t *meta; /* the meta page the write transaction began from (or meta_copy) */
    uint64_t meta_pgno;  /* its page (0 or 1) */
    uint8_t meta_copy[160]; /* a snapshot's: its header and MDB_meta up to mm_txnid (lp_view_init) */
    uint64_t npages;     /* pages in the committed file (and inside the map) */
    unsigned psize;
    uint64_t budget;     /* pages a whole-tree check may still read */
    uint64_t *memo;      /* pages found sound in this write transaction (NULL: none kept) */
    unsigned memo_mask;  /* its size less one (a power of two) */
    uint64_t *live;      /* whole-file checks: a bit per page a table uses (NULL: not kept) */
    uint64_t *freed;     /* whole-file checks: a bit per page the free-page lists name */
    uint64_t bad_pgno;   /* on failure: the page found wrong */
    const char *why;     /* on failure: what was wrong with it */
    bool unseen;         /* on failure: a finding of live/freed, which a write does not check */
    bool moved;          /* on failure: a snapshot's meta page was already a later commit's (not damage) */
} lp_view;

/* The committed state a write transaction with id txnid (mdb_txn_id: the
 * last commit's plus one) began from: its meta page, the number of pages
 * it uses. map_len: bytes mapped. snapshot: for a read transaction's
 * snapshot (txnid: its id plus one), whose meta page a later commit may
 * write again meanwhile: read once, into v->meta_copy; false with v->moved
 * when a later commit already did (take a new snapshot). false: the meta
 * page is not one (v->why). */
bool lp_view_init(lp_view *v, const void *map, uint64_t map_len, unsigned psize, uint64_t txnid, bool snapshot);

/* The main table and the free-page table, whole. */
bool lp_check_system(lp_view *v);

/* The pages a put (del false) or delete of key k (and with dups, of value
 * d, or with d NULL every value of k) in the named table name will copy;
 * the neighbours only for a delete (a put's split makes a new page). A
 * table not created yet passes (LMDB makes it afresh). */
bool lp_check_key(lp_view *v, const char *name, bool dups, const void *k, size_t kl, const void *d, size_t dl,
                  bool del);

/* Every page of the named table (emptied at once: LMDB frees each). */
bool lp_check_table(lp_view *v, const char *name, bool dups);

/* Whole-file checks (verify) may give v->live and v->freed, bitmaps of
 * v->npages bits, zeroed, before lp_check_system and lp_check_table of
 * every table: a page two places name (two tables, or one table twice) then
 * fails where it is met the second time, and a page the free-page lists
 * name twice fails there; after every table, this: a page the free-page
 * lists name that a table uses. Such a failure sets v->unseen. LMDB hands out free pages to the next
 * writers, which would write over what that table holds there: a write
 * transaction cannot see this (it would have to read every table), so it
 * is verify's finding (the free-page lists are not copied by a backup,
 * which copies the tables). */
bool lp_check_free_unused(lp_view *v);

#endif
