/* For test_demangle.py: C++ templates, overloads, operators, an anonymous namespace. */
#include <cstdio>
namespace shapes {
template <typename T> class Box {
  public:
    explicit Box(T v) : value_(v) {}
    T get() const { return value_; }
    bool operator<(const Box &other) const { return value_ < other.value_; }
    T operator()(T x) const { return value_ + x; }
  private:
    T value_;
};
int area(int w, int h) { return w * h; }
double area(double r) { return 3.0 * r * r; }
template <typename F> int apply(F f, int x) { return f(x); }
namespace {
int hidden(int x) { return x + 1; }
}
int run() {
    Box<int> a(1), b(2);
    Box<double> c(0.5);
    return a.get() + (a < b) + a(3) + area(2, 3) + (int)area(1.0) + (int)c(1.0) +
           apply(hidden, 4);
}
}  // namespace shapes
int main() {
    int result = shapes::run();
    std::printf("ready\n");
    std::fflush(stdout);
    while (std::getchar() != EOF) {}
    return result == 12345;
}
