/* p11mk keystore: LMDB's pages checked before LMDB is asked to write (why:
 * ks_lmdb_pages.h). A reader of LMDB 0.9's on-disk format; every read here
 * runs in a fault frame (ks_lmdb.c), and every offset it follows is checked
 * against the page it came from first. */
#include "ks_lmdb_pages.h"

#include <string.h>

/* LMDB 0.9's format (mdb.c: MDB_page, MDB_node, MDB_db, MDB_meta). */
enum {
    PGHDR = 16,   /* page header: pgno (8), pad (2), flags (2), lower (2), upper (2) or pages (4) */
    NODESZ = 8,   /* node header: lo (2), hi (2), flags (2), ksize (2) */
    DBREC = 48,   /* MDB_db: pad (4), flags (2), depth (2), 4 counts (8 each), root (8) */
    MAXDEPTH = 32 /* deeper than any tree of 2^64 pages */
};
enum { P_BRANCH = 0x01, P_LEAF = 0x02, P_OVERFLOW = 0x04, P_META = 0x08, P_LEAF2 = 0x20, P_SUBP = 0x40 };
enum { F_BIGDATA = 0x01, F_SUBDATA = 0x02, F_DUPDATA = 0x04 };
enum { DB_INTEGERKEY = 0x08, DB_DUPSORT = 0x04, DB_DUPFIXED = 0x10 }; /* MDB_db.md_flags */
enum { ENV_FIXEDMAP = 0x01, ENV_NOSUBDIR = 0x4000 }; /* mdb_env_open's flags a file made keeps (MDB_FIXEDMAP, MDB_NOSUBDIR) */
enum { MAX_PSIZE = 0x8000 };                                            /* LMDB's MAX_PAGESIZE */
#define META_MAGIC 0xBEEFC0DEu
#define META_VERSION 1u
#define NO_ROOT UINT64_MAX /* P_INVALID: an empty tree */
#define FIXED_DUP 8        /* the size of every value of p11mk's one table of duplicates (the index) */

static uint16_t rd16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}
static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}
static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* What kind of table a tree is: it says which node flags a leaf may carry. */
typedef enum {
    T_PLAIN, /* meta, tokens, objects: values, maybe on overflow pages */
    T_DUPS,  /* index: one value inline, or a sub-page of values, or a tree of them */
    T_VALS,  /* a tree of one key's values (LEAF2 leaves of FIXED_DUP bytes) */
    T_MAIN,  /* the main table: a record per named table */
    T_FREE   /* the free-page table: lists of page numbers by transaction id */
} tree_kind;

typedef struct {
    uint64_t root;
    unsigned depth;
    tree_kind kind;
} tree;

/* A page, or a sub-page inside a node. */
typedef struct {
    const uint8_t *p;
    size_t size;
    uint64_t pgno; /* of the page holding it */
} page;

static bool bad(lp_view *v, uint64_t pgno, const char *why)
{
    v->bad_pgno = pgno;
    v->why = why;
    return false;
}

static unsigned pg_flags(const page *g) { return rd16(g->p + 10); }
static unsigned pg_lower(const page *g) { return rd16(g->p + 12); }
static unsigned pg_upper(const page *g) { return rd16(g->p + 14); }
static unsigned pg_keys(const page *g) { return (pg_lower(g) - PGHDR) >> 1; }
static const uint8_t *pg_node(const page *g, unsigned i) { return g->p + rd16(g->p + PGHDR + 2 * i); }
static unsigned nd_flags(const uint8_t *n) { return rd16(n + 4); }
static unsigned nd_ksize(const uint8_t *n) { return rd16(n + 6); }
static size_t nd_dsize(const uint8_t *n) { return (size_t)rd16(n) | (size_t)rd16(n + 2) << 16; }
static uint64_t nd_child(const uint8_t *n) { return rd16(n) | (uint64_t)rd16(n + 2) << 16 | (uint64_t)rd16(n + 4) << 32; }
static const uint8_t *nd_data(const uint8_t *n) { return n + NODESZ + nd_ksize(n); }

static bool in_file(const lp_view *v, uint64_t pgno) { return pgno >= 2 && pgno < v->npages; }

/* A finding of the whole-file checks only (v->unseen: no write sees it). */
static bool unseen(lp_view *v, uint64_t pgno, const char *why)
{
    v->unseen = true;
    return bad(v, pgno, why);
}

/* Sets pgno's bit in map (a bitmap of v->npages bits); false when it was set. */
static bool mark(uint64_t *map, uint64_t pgno)
{
    uint64_t m = 1ull << (pgno % 64), was = map[pgno / 64];
    map[pgno / 64] = was | m;
    return !(was & m);
}

/* Whole-file checks: pages [pgno, pgno + n) in use by a table (in the file). */
static bool mark_live(lp_view *v, uint64_t pgno, uint64_t n)
{
    if (v->live)
        for (uint64_t i = 0; i < n; i++)
            if (!mark(v->live, pgno + i))
                return unseen(v, pgno + i, "named as theirs by two places of the file (two tables, or one twice)");
    return true;
}

/* Page pgno of the file, when it says it is that page. */
static bool get_page(lp_view *v, uint64_t pgno, page *out)
{
    if (!in_file(v, pgno))
        return bad(v, pgno, "a page number outside the file");
    out->p = v->map + pgno * v->psize;
    out->size = v->psize;
    out->pgno = pgno;
    if (rd64(out->p) != pgno)
        return bad(v, pgno, "a page whose header names another page");
    return true;
}

/* A MDB_db record (of a table, or a tree of values) read as a tree; its
 * flags must be the ones LMDB gives that kind of table (they choose LMDB's
 * comparisons and whether it looks for values under a key). */
static bool read_db(lp_view *v, uint64_t pgno, const uint8_t *rec, tree_kind kind, tree *t)
{
    static const unsigned flags[] = {[T_PLAIN] = 0, [T_DUPS] = DB_DUPSORT | DB_DUPFIXED, [T_VALS] = DB_DUPFIXED,
                                     [T_MAIN] = 0, [T_FREE] = DB_INTEGERKEY};
    /* The free-page table's record is also the file's: LMDB writes the
     * environment's low flags there when it makes the file (MDB_NOSUBDIR
     * from mdb_copy -n, MDB_FIXEDMAP), and every commit carries them on. */
    unsigned have = rd16(rec + 4);
    if (kind == T_FREE)
        have &= ~(unsigned)(ENV_FIXEDMAP | ENV_NOSUBDIR);
    if (have != flags[kind])
        return bad(v, pgno, "a table record whose flags are not the ones LMDB gives that table");
    if (kind == T_FREE && rd32(rec) != v->psize)
        return bad(v, pgno, "a meta page whose page size is not the file's");
    t->root = rd64(rec + 40);
    t->depth = rd16(rec + 6);
    t->kind = kind;
    if (t->root == NO_ROOT)
        return t->depth == 0 ? true : bad(v, pgno, "an empty table with a depth");
    if (t->depth < 1 || t->depth > MAXDEPTH)
        return bad(v, pgno, "a table's depth out of range");
    if (!in_file(v, t->root))
        return bad(v, pgno, "a table's root outside the file");
    if (kind == T_VALS && rd32(rec) != FIXED_DUP)
        return bad(v, pgno, "a tree of values whose size is not the index's");
    return true;
}

/* The overflow pages of a value of dsize bytes that begin at pgno. */
static bool check_overflow(lp_view *v, uint64_t pgno, size_t dsize)
{
    page g;
    if (!get_page(v, pgno, &g))
        return false;
    if (pg_flags(&g) != P_OVERFLOW) /* exactly, as check_page_once */
        return bad(v, pgno, "a value's overflow page that is not one");
    uint64_t pages = rd32(g.p + 12);
    uint64_t need = (PGHDR - 1 + (uint64_t)dsize) / v->psize + 1; /* LMDB's OVPAGES */
    if (pages < need || pages > v->npages - pgno)
        return bad(v, pgno, "an overflow page's count that does not fit its value or the file");
    return mark_live(v, pgno, pages);
}

/* A list of free pages (MDB_IDL: a count, then the numbers) in n bytes. */
static bool check_idl(lp_view *v, uint64_t pgno, const uint8_t *p, size_t n)
{
    if (n < 8 || n % 8)
        return bad(v, pgno, "a free-page list of an odd size");
    uint64_t count = rd64(p);
    if (count > n / 8 - 1)
        return bad(v, pgno, "a free-page list longer than its record");
    for (uint64_t i = 1; i <= count; i++) {
        uint64_t f = rd64(p + 8 * i);
        if (!in_file(v, f))
            return bad(v, pgno, "a free-page list naming a page outside the file");
        if (v->freed && !mark(v->freed, f))
            return unseen(v, f, "named twice by the free-page lists (LMDB would give it to two writers)");
    }
    return true;
}

/* A LEAF2 page or sub-page: keys of FIXED_DUP bytes packed after the
 * header; the free space LMDB reckons (upper - lower) must be there. */
static bool check_leaf2(lp_view *v, const page *g)
{
    size_t used = PGHDR + (size_t)pg_keys(g) * FIXED_DUP;
    if (used > g->size || pg_upper(g) - pg_lower(g) > g->size - used)
        return bad(v, g->pgno, "a page of fixed-size values larger than itself");
    return true;
}

/* The header's bounds: the pointer array and the free space inside the page. */
static bool check_bounds(lp_view *v, const page *g)
{
    unsigned lo = pg_lower(g), up = pg_upper(g);
    if (g->size < PGHDR || lo < PGHDR || lo > up || up > g->size || (lo - PGHDR) % 2)
        return bad(v, g->pgno, "a page header whose bounds lie outside the page");
    return true;
}

/* A sub-page of values inside an index node (dsize bytes). */
static bool check_subpage(lp_view *v, uint64_t pgno, const uint8_t *p, size_t dsize)
{
    page g = {p, dsize, pgno};
    if (dsize < PGHDR)
        return bad(v, pgno, "a sub-page smaller than its header");
    unsigned f = pg_flags(&g);
    if ((f & (P_LEAF | P_LEAF2 | P_SUBP | P_BRANCH | P_OVERFLOW | P_META)) != (P_LEAF | P_LEAF2 | P_SUBP))
        return bad(v, pgno, "an index node whose sub-page is not one of fixed-size values");
    if (rd16(g.p + 8) != FIXED_DUP)
        return bad(v, pgno, "a sub-page of values whose size is not the index's");
    return check_bounds(v, &g) && check_leaf2(v, &g);
}

/* Marks the node at [off, off + len) of a page in used (a bit per two
 * bytes: nodes begin at even offsets and LMDB rounds their sizes up to
 * even); false when it overlaps one marked before. LMDB keeps a page's
 * nodes side by side; a node grown over its neighbour (one edited size)
 * passes every check of its own, and a delete's memmove in LMDB's heap copy
 * of the page then ran past the copy. */
static bool mark_node(uint64_t *used, unsigned off, size_t len)
{
    for (size_t u = off / 2, end = (off + len + 1) / 2; u < end;) {
        size_t w = u / 64, b = u % 64, k = end - u < 64 - b ? end - u : 64 - b;
        uint64_t m = (k == 64 ? ~0ull : ((1ull << k) - 1)) << b;
        if (used[w] & m)
            return false;
        used[w] |= m;
        u += k;
    }
    return true;
}

/* Every node of a branch or leaf page lies inside it, apart from the
 * others, with what its table allows. */
static bool check_nodes(lp_view *v, const page *g, bool branch, tree_kind kind)
{
    unsigned n = pg_keys(g), up = pg_upper(g);
    uint64_t used[MAX_PSIZE / 2 / 64];
    size_t held = 0; /* bytes the nodes take, each rounded up to even as LMDB lays them */
    if (n == 0) /* LMDB frees a page its last node leaves (an empty table has no root) */
        return bad(v, g->pgno, branch ? "a branch page with no children" : "a leaf page with no records");
    if (g->size > MAX_PSIZE)
        return bad(v, g->pgno, "a page larger than LMDB makes them");
    memset(used, 0, (g->size / 2 + 63) / 64 * sizeof(used[0]));
    for (unsigned i = 0; i < n; i++) {
        unsigned off = rd16(g->p + PGHDR + 2 * i);
        if (off < up || off % 2 || off > g->size - NODESZ)
            return bad(v, g->pgno, "a node pointer outside the page's nodes");
        const uint8_t *nd = g->p + off;
        size_t room = g->size - off - NODESZ, ks = nd_ksize(nd);
        if (branch) {
            if (ks > room)
                return bad(v, g->pgno, "a branch node larger than its page");
            if (!mark_node(used, off, NODESZ + ks))
                return bad(v, g->pgno, "a branch node over another");
            held += (NODESZ + ks + 1) & ~(size_t)1;
            if (!in_file(v, nd_child(nd)))
                return bad(v, g->pgno, "a branch node naming a page outside the file");
            continue;
        }
        unsigned f = nd_flags(nd);
        size_t ds = nd_dsize(nd), len = ks + (f & F_BIGDATA ? 8 : ds);
        if (len > room)
            return bad(v, g->pgno, "a leaf node larger than its page");
        if (!mark_node(used, off, NODESZ + len))
            return bad(v, g->pgno, "a leaf node over another");
        held += (NODESZ + len + 1) & ~(size_t)1;
        bool ok;
        switch (kind) {
        case T_PLAIN: ok = (f & ~F_BIGDATA) == 0; break;
        case T_FREE: ok = (f & ~F_BIGDATA) == 0 && ks == 8; break;
        case T_MAIN: ok = f == F_SUBDATA && ds == DBREC; break;
        case T_DUPS:
            ok = (f == 0 && ds == FIXED_DUP) || f == F_DUPDATA || (f == (F_DUPDATA | F_SUBDATA) && ds == DBREC);
            break;
        default: ok = false; break;
        }
        if (!ok)
            return bad(v, g->pgno, "a leaf node with flags or a size its table does not allow");
        if ((f & F_BIGDATA) && !in_file(v, rd64(nd_data(nd))))
            return bad(v, g->pgno, "a value on overflow pages outside the file");
    }
    /* LMDB keeps the nodes packed from mp_upper to the page's end (a node
     * leaving moves the others up): bytes there that no pointer names are
     * nodes the pointer array no longer counts (mp_lower lowered), records
     * every walk would miss and a delete or rewrap would skip. */
    if (held != g->size - up)
        return bad(v, g->pgno, "bytes among its nodes that no node pointer names (records hidden)");
    return true;
}

/* A page found sound for one place in one kind of tree earlier in this
 * write transaction (the committed pages do not change while it runs):
 * its slot in the memo, a direct-mapped table of pgno, kind and place. */
static uint64_t *memo_slot(const lp_view *v, uint64_t pgno, tree_kind kind, bool branch, uint64_t *key)
{
    *key = (pgno << 4 | (uint64_t)kind << 1 | branch) + 1; /* 0: an empty slot */
    return v->memo ? &v->memo[(*key * 0x9e3779b97f4a7c15u) >> 40 & v->memo_mask] : NULL;
}

static bool check_page_once(lp_view *v, const tree *t, uint64_t pgno, bool branch, page *out);

/* Page pgno at a level of t: a branch above the leaves, a leaf at the last. */
static bool check_page(lp_view *v, const tree *t, uint64_t pgno, unsigned level, page *out)
{
    bool branch = level < t->depth;
    uint64_t key, *slot = memo_slot(v, pgno, t->kind, branch, &key);
    if (slot && *slot == key)
        return get_page(v, pgno, out);
    if (!check_page_once(v, t, pgno, branch, out))
        return false;
    if (slot)
        *slot = key;
    return true;
}

static bool check_page_once(lp_view *v, const tree *t, uint64_t pgno, bool branch, page *out)
{
    if (!get_page(v, pgno, out))
        return false;
    /* exactly: a committed page never carries P_DIRTY, P_LOOSE or P_KEEP
     * (LMDB clears them before it writes a page); with P_DIRTY set, LMDB
     * would change the page in place in the map instead of copying it */
    unsigned want = branch ? P_BRANCH : t->kind == T_VALS ? P_LEAF | P_LEAF2 : P_LEAF;
    if (pg_flags(out) != want)
        return bad(v, pgno, branch ? "a page where a branch page belongs that is not one"
                                   : "a page where a leaf page belongs that is not one");
    if (!check_bounds(v, out))
        return false;
    if (!branch && t->kind == T_VALS)
        return check_leaf2(v, out);
    return check_nodes(v, out, branch, t->kind);
}

/* LMDB's key order: memcmp over the shorter length, then the shorter first. */
static int cmp_key(const void *a, size_t al, const void *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : al < bl ? -1 : al > bl;
}

/* LMDB's search of a branch or leaf page for key (mdb_node_search, with
 * its binary search, so that a page out of order leads here where it leads
 * LMDB): the index of the first node not below key (a branch's node 0
 * stands for every key below node 1's), pg_keys when none; *exact when
 * equal. */
static unsigned search(const page *g, const void *k, size_t kl, bool *exact)
{
    unsigned n = pg_keys(g), i = 0;
    int low = (pg_flags(g) & P_LEAF) ? 0 : 1, high = (int)n - 1, rc = 0;
    while (low <= high) {
        i = (unsigned)(low + high) >> 1;
        rc = cmp_key(k, kl, pg_node(g, i) + NODESZ, nd_ksize(pg_node(g, i)));
        if (rc == 0)
            break;
        if (rc > 0)
            low = (int)i + 1;
        else
            high = (int)i - 1;
    }
    if (rc > 0)
        i++;
    *exact = rc == 0 && n > 0;
    return i;
}

/* The child of branch page g that LMDB follows for key (mdb_page_search_root). */
static unsigned child_for(const page *g, const void *k, size_t kl)
{
    bool exact;
    unsigned n = pg_keys(g), i = search(g, k, kl, &exact);
    if (i >= n)
        return n - 1;
    return exact || i == 0 ? i : i - 1;
}

static bool check_tree(lp_view *v, const tree *t, uint64_t pgno, unsigned level);

/* The neighbours of child i of branch page g (at level): a delete may
 * merge a page with one of them, or move a node from one (mdb_rebalance);
 * a put never touches them (a split makes a new page). */
static bool check_sides(lp_view *v, const tree *t, const page *g, unsigned i, unsigned level)
{
    page side;
    if (i > 0 && !check_page(v, t, nd_child(pg_node(g, i - 1)), level + 1, &side))
        return false;
    return i + 1 >= pg_keys(g) || check_page(v, t, nd_child(pg_node(g, i + 1)), level + 1, &side);
}

/* A record's own pages below its leaf node: its overflow pages, its tree of
 * values (the path to d, or all of it when d is NULL). */
static bool check_record(lp_view *v, const page *leaf, const uint8_t *nd, tree_kind kind, const void *d, size_t dl,
                         bool sides);

/* The path to key k in t, and with sides each page's neighbours; with the
 * record. */
static bool check_path(lp_view *v, const tree *t, const void *k, size_t kl, const void *d, size_t dl, bool sides)
{
    page g;
    uint64_t pgno = t->root;
    if (pgno == NO_ROOT)
        return true;
    for (unsigned level = 1;; level++) {
        if (!check_page(v, t, pgno, level, &g))
            return false;
        if (level == t->depth) {
            bool exact;
            unsigned i = search(&g, k, kl, &exact);
            return !exact || check_record(v, &g, pg_node(&g, i), t->kind, d, dl, sides);
        }
        unsigned i = child_for(&g, k, kl);
        if (sides && !check_sides(v, t, &g, i, level))
            return false;
        pgno = nd_child(pg_node(&g, i));
    }
}

/* The path to value d in a tree of values, and with sides each page's
 * neighbours. */
static bool check_vals_path(lp_view *v, const tree *t, const void *d, size_t dl, bool sides)
{
    page g;
    uint64_t pgno = t->root;
    for (unsigned level = 1; level < t->depth; level++) {
        if (!check_page(v, t, pgno, level, &g))
            return false;
        unsigned i = child_for(&g, d, dl);
        if (sides && !check_sides(v, t, &g, i, level))
            return false;
        pgno = nd_child(pg_node(&g, i));
    }
    return check_page(v, t, pgno, t->depth, &g);
}

static bool check_record(lp_view *v, const page *leaf, const uint8_t *nd, tree_kind kind, const void *d, size_t dl,
                         bool sides)
{
    unsigned f = nd_flags(nd);
    if (f & F_BIGDATA)
        return check_overflow(v, rd64(nd_data(nd)), nd_dsize(nd));
    if (kind != T_DUPS || !(f & F_DUPDATA))
        return true;
    if (!(f & F_SUBDATA))
        return check_subpage(v, leaf->pgno, nd_data(nd), nd_dsize(nd));
    tree vals;
    if (!read_db(v, leaf->pgno, nd_data(nd), T_VALS, &vals))
        return false;
    if (vals.root == NO_ROOT)
        return true;
    if (!d) {
        v->budget = v->npages;
        return check_tree(v, &vals, vals.root, 1);
    }
    return check_vals_path(v, &vals, d, dl, sides);
}

/* Every page of t below pgno (at level), within the budget of pages: a
 * damaged tree may name one page from many places. */
static bool check_tree(lp_view *v, const tree *t, uint64_t pgno, unsigned level)
{
    page g;
    if (v->budget == 0)
        return bad(v, pgno, "a tree with more pages than the file");
    v->budget--;
    if (!check_page(v, t, pgno, level, &g) || !mark_live(v, pgno, 1))
        return false;
    unsigned n = t->kind == T_VALS && level == t->depth ? 0 : pg_keys(&g);
    for (unsigned i = 0; i < n; i++) {
        const uint8_t *nd = pg_node(&g, i);
        if (level < t->depth) {
            if (!check_tree(v, t, nd_child(nd), level + 1))
                return false;
            continue;
        }
        unsigned f = nd_flags(nd);
        if (t->kind == T_FREE) {
            if (f & F_BIGDATA) {
                uint64_t ov = rd64(nd_data(nd));
                if (!check_overflow(v, ov, nd_dsize(nd)) ||
                    !check_idl(v, ov, v->map + ov * v->psize + PGHDR, nd_dsize(nd)))
                    return false;
            } else if (!check_idl(v, g.pgno, nd_data(nd), nd_dsize(nd))) {
                return false;
            }
        } else if (f & F_BIGDATA) {
            if (!check_overflow(v, rd64(nd_data(nd)), nd_dsize(nd)))
                return false;
        } else if (t->kind == T_DUPS && (f & F_DUPDATA)) {
            tree vals;
            if (!(f & F_SUBDATA)) {
                if (!check_subpage(v, g.pgno, nd_data(nd), nd_dsize(nd)))
                    return false;
            } else if (!read_db(v, g.pgno, nd_data(nd), T_VALS, &vals) ||
                       (vals.root != NO_ROOT && !check_tree(v, &vals, vals.root, 1))) {
                return false;
            }
        }
    }
    return true;
}

bool lp_view_init(lp_view *v, const void *map, uint64_t map_len, unsigned psize, uint64_t txnid, bool snapshot)
{
    memset(v, 0, sizeof(*v));
    v->map = map;
    v->psize = psize;
    if (!map || psize < 512 || psize > MAX_PSIZE || txnid == 0 || map_len < 2ull * psize)
        return bad(v, 0, "no map to read");
    v->meta_pgno = (txnid - 1) & 1;
    v->meta = v->map + v->meta_pgno * psize; /* the one LMDB's write transaction began from */
    if (snapshot) {
        /* A reader's snapshot (verify, backups) holds its tree's pages, not
         * its meta page, which the second commit after it writes again (a
         * root read from that commit and a page count from the snapshot's
         * named pages outside the file: found by a hostile tester, backups
         * under writers refused as damaged). So the meta page is copied:
         * every field from one moment, copied until two copies agree
         * (LMDB writes it with a pwrite, which a map reader can see half
         * done), and it must be the snapshot's own (its transaction id).
         * A write transaction holds LMDB's writer lock: no commit can
         * write its meta page. */
        uint8_t again[sizeof(v->meta_copy)];
        for (int tries = 0;; tries++) {
            memcpy(v->meta_copy, v->meta, sizeof(v->meta_copy));
            memcpy(again, v->meta, sizeof(again));
            if (memcmp(v->meta_copy, again, sizeof(again)) == 0)
                break;
            if (tries == 100)
                return bad(v, v->meta_pgno, "a meta page that kept changing while it was read");
        }
        v->meta = v->meta_copy;
        /* Some other commit's (the snapshot's reader was held up while two
         * or more commits ran): its pages may lie past this process's map,
         * grown by another; the caller takes a new snapshot (v->moved). */
        if (rd64(v->meta + LP_META_TXNID) != txnid - 1) {
            v->moved = true;
            return bad(v, v->meta_pgno, "a meta page of a later commit than the snapshot's");
        }
    }
    if (rd64(v->meta) != v->meta_pgno || !(rd16(v->meta + 10) & P_META) || rd32(v->meta + 16) != META_MAGIC ||
        rd32(v->meta + 20) != META_VERSION)
        return bad(v, v->meta_pgno, "a meta page that is not one");
    uint64_t last = rd64(v->meta + 136), in_map = map_len / psize;
    if (last < 1 || last >= in_map)
        return bad(v, v->meta_pgno, "a meta page naming more pages than are mapped");
    v->npages = last + 1;
    return true;
}

/* The meta page's record of table i (0: free pages, 1: main). */
static bool meta_tree(lp_view *v, unsigned i, tree_kind kind, tree *t)
{
    return read_db(v, v->meta_pgno, v->meta + 40 + DBREC * i, kind, t);
}

bool lp_check_system(lp_view *v)
{
    tree t;
    for (unsigned i = 0; i < 2; i++) {
        if (!meta_tree(v, i, i ? T_MAIN : T_FREE, &t))
            return false;
        v->budget = v->npages;
        if (t.root != NO_ROOT && !check_tree(v, &t, t.root, 1))
            return false;
    }
    return true;
}

/* The named table's tree, from its record in the main table (checked
 * whole at the transaction's start, so the path there is a checked one).
 * false with v->why NULL: no such table yet. */
static bool named(lp_view *v, const char *name, bool dups, tree *t)
{
    tree m;
    page g;
    if (!meta_tree(v, 1, T_MAIN, &m) || m.root == NO_ROOT)
        return false;
    uint64_t pgno = m.root;
    size_t nl = strlen(name);
    for (unsigned level = 1; level <= m.depth; level++) {
        if (!check_page(v, &m, pgno, level, &g))
            return false;
        if (level == m.depth) {
            bool exact;
            unsigned i = search(&g, name, nl, &exact);
            return exact && read_db(v, g.pgno, nd_data(pg_node(&g, i)), dups ? T_DUPS : T_PLAIN, t);
        }
        pgno = nd_child(pg_node(&g, child_for(&g, name, nl)));
    }
    return false;
}

bool lp_check_key(lp_view *v, const char *name, bool dups, const void *k, size_t kl, const void *d, size_t dl,
                  bool del)
{
    tree t;
    if (!named(v, name, dups, &t))
        return v->why == NULL;
    return check_path(v, &t, k, kl, d, dl, del);
}

bool lp_check_table(lp_view *v, const char *name, bool dups)
{
    tree t;
    if (!named(v, name, dups, &t))
        return v->why == NULL;
    v->budget = v->npages;
    return t.root == NO_ROOT || check_tree(v, &t, t.root, 1);
}

bool lp_check_free_unused(lp_view *v)
{
    if (!v->live || !v->freed)
        return true;
    for (uint64_t w = 0; w < (v->npages + 63) / 64; w++)
        if (v->live[w] & v->freed[w])
            return unseen(v, w * 64 + (uint64_t)__builtin_ctzll(v->live[w] & v->freed[w]),
                       "named by the free-page lists while a table uses it (LMDB would give it to the next "
                       "writer, which would write over it)");
    return true;
}
