/* For bench/overhead.py: burns CPU forever in three call chains of different weight. */
static volatile unsigned long sink;
static void leaf_hash(int n) { unsigned long h = 5381; while (n--) h = h * 33 + n; sink += h; }
static void leaf_mul(int n) { unsigned long p = 1; while (--n > 0) p *= n | 1; sink += p; }
static void middle(int n) { leaf_mul(n); leaf_hash(n / 2); }
static void chain_a(void) { leaf_hash(200000); }
static void chain_b(void) { middle(200000); }
static void chain_c(void) { for (int i = 0; i < 4; i++) middle(50000); }
int main(void) { for (;;) { chain_a(); chain_b(); chain_c(); } }
