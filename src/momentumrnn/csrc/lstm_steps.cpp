// The CPU step kernels of the loops (loops.py, scan.AdamChunks), each over a chunk of time steps:
// the LSTM recurrence, per step one GEMM (ATen's addmm) and one fused pass over the gates,
// forward and backward, and Adam's states, one fused pass per step, so that no step pays for
// the dispatch of a handful of small elementwise ops. Built on first use by
// torch.utils.cpp_extension (momentumrnn/cpu_kernels.py); registered as torch ops.
//
// Forward, step t (gate order i, f, g, o; A_t the step's terms with b_hh added):
//   plain:     pre_t = A_t + U h_{t-1}
//   nesterov:  v_t = A_t + U h_{t-1};  pre_t = v_t + c_t (v_t - v_{t-1})
//   i, f, o = sigmoid(pre_t[i, f, o]);  g = tanh(pre_t[g]);  c_t = f c_{t-1} + i g;
//   h_t = o tanh(c_t)
// The activations, c_t and tanh(c_t) are written into the buffers the backward reads.
// Backward, step t: the gradient of pre_t from those of h_t and c_t, for nesterov turned into
// the gradient reaching v_t, then dh_{t-1} = grad_out_{t-1} + d_t U.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

namespace {

using at::Tensor;
using at::vec::Vectorized;

// Elements per task when a pass runs on several threads (as torch's elementwise kernels).
constexpr int64_t kGrain = 32768;

// The rows of a step (sequences) split among torch's threads where a step is that large.
template <typename F>
inline void for_rows(int64_t batch, int64_t row_size, const F& body) {
  at::parallel_for(0, batch, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, row_size)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t b = begin; b < end; ++b) body(b);
                   });
}

template <typename scalar_t>
inline Vectorized<scalar_t> sigmoid(const Vectorized<scalar_t>& x) {
  const Vectorized<scalar_t> one(scalar_t(1));
  return (one + x.neg().exp()).reciprocal();
}

template <typename scalar_t>
inline scalar_t sigmoid(scalar_t x) {
  return scalar_t(1) / (scalar_t(1) + std::exp(-x));
}

// The coefficient c_t of sequence b from a contiguous (T, 1) (shared by the batch) or (T, B).
template <typename scalar_t>
inline scalar_t coefficient_at(const scalar_t* coefficient, int64_t columns, int64_t t, int64_t b) {
  return coefficient[t * columns + (columns == 1 ? 0 : b)];
}

// One step's gates and state for sequences 0..B-1. ``pre`` holds A_t + U h_{t-1} (nesterov: v_t,
// and ``velocity`` v_{t-1}, which becomes v_t).
template <typename scalar_t>
void forward_step(const scalar_t* pre, scalar_t* velocity, const scalar_t* coefficient, int64_t coefficient_columns,
                  int64_t t, scalar_t* act, const scalar_t* c_prev, scalar_t* c,
                  scalar_t* tanh_c, scalar_t* h, int64_t batch, int64_t hidden) {
  using V = Vectorized<scalar_t>;
  const int64_t gates = 4 * hidden;
  const int64_t width = V::size();
  for_rows(batch, gates, [&](int64_t b) {
    const scalar_t* p = pre + b * gates;
    scalar_t* a = act + b * gates;
    if (velocity != nullptr) {           // pre_t = v_t + c_t (v_t - v_{t-1}) into a, and v_{t-1} <- v_t
      scalar_t* vp = velocity + b * gates;
      const scalar_t k = coefficient_at(coefficient, coefficient_columns, t, b);
      const V kv(k);
      int64_t j = 0;
      for (; j + width <= gates; j += width) {
        V v = V::loadu(p + j);
        V previous = V::loadu(vp + j);
        (v + kv * (v - previous)).store(a + j);
        v.store(vp + j);
      }
      for (; j < gates; ++j) {
        const scalar_t v = p[j];
        a[j] = v + k * (v - vp[j]);
        vp[j] = v;
      }
      p = a;                             // the activations overwrite the pre-activations in place
    }
    const scalar_t* cp = c_prev + b * hidden;
    scalar_t* cb = c + b * hidden;
    scalar_t* tb = tanh_c + b * hidden;
    scalar_t* hb = h + b * hidden;
    int64_t j = 0;
    for (; j + width <= hidden; j += width) {
      V i = sigmoid(V::loadu(p + j));
      V f = sigmoid(V::loadu(p + hidden + j));
      V g = V::loadu(p + 2 * hidden + j).tanh();
      V o = sigmoid(V::loadu(p + 3 * hidden + j));
      i.store(a + j);
      f.store(a + hidden + j);
      g.store(a + 2 * hidden + j);
      o.store(a + 3 * hidden + j);
      V cell = f * V::loadu(cp + j) + i * g;
      cell.store(cb + j);
      V tc = cell.tanh();
      tc.store(tb + j);
      (o * tc).store(hb + j);
    }
    for (; j < hidden; ++j) {
      const scalar_t i = sigmoid(p[j]);
      const scalar_t f = sigmoid(p[hidden + j]);
      const scalar_t g = std::tanh(p[2 * hidden + j]);
      const scalar_t o = sigmoid(p[3 * hidden + j]);
      a[j] = i;
      a[hidden + j] = f;
      a[2 * hidden + j] = g;
      a[3 * hidden + j] = o;
      const scalar_t cell = f * cp[j] + i * g;
      cb[j] = cell;
      const scalar_t tc = std::tanh(cell);
      tb[j] = tc;
      hb[j] = o * tc;
    }
  });
}

void check_buffer(const Tensor& tensor, const char* name, const Tensor& like) {
  TORCH_CHECK(tensor.is_contiguous(), "lstm steps: ", name, " must be contiguous");
  TORCH_CHECK(tensor.scalar_type() == like.scalar_type(), "lstm steps: ", name, " has dtype ", tensor.scalar_type(),
              ", expected ", like.scalar_type());
  TORCH_CHECK(tensor.device().is_cpu(), "lstm steps: ", name, " must be on the CPU");
}

// Steps start..start+L-1 of the forward over ``block`` (L, B, 4H), the chunk's terms with b_hh (and
// for nesterov the scale) applied. ``h_prev``: h_{start-1}. ``weight_t``: U^T (H, 4H). ``outs``
// (T, B, H), ``acts`` (T, B, 4H), ``cells`` (T+1, B, H, cells[start] = c_{start-1}),
// ``tanh_cells`` (T, B, H): the buffers of all steps; or, without a backward to come, ``acts``
// (1, B, 4H), ``tanh_cells`` (1, B, H) and ``cells`` (2, B, H) with the cell state of step t
// (from 0) in cells[(t + 1) % 2]. ``pre`` (B, 4H): scratch. Nesterov: ``coefficient`` (T, 1 or B)
// and ``velocity`` (B, 4H), v_{start-1} on entry and v of the chunk's last step on return.
void lstm_forward_steps(const Tensor& block, const Tensor& h_prev, const Tensor& weight_t, const Tensor& outs,
                        const Tensor& acts, const Tensor& cells, const Tensor& tanh_cells, const Tensor& pre,
                        int64_t start, const std::optional<Tensor>& coefficient,
                        const std::optional<Tensor>& velocity) {
  const int64_t steps = block.size(0);
  const int64_t batch = block.size(1);
  const int64_t hidden = outs.size(2);
  for (const auto& [tensor, name] : {std::pair{outs, "outs"}, {acts, "acts"}, {cells, "cells"},
                                     {tanh_cells, "tanh_cells"}, {pre, "pre"}}) {
    check_buffer(tensor, name, block);
  }
  // ``ring``: buffers of one step (inference: no backward reads them); the cell states
  // alternate between cells[0] and cells[1]
  const bool ring = acts.size(0) == 1;
  const int64_t time = outs.size(0);
  TORCH_CHECK(start >= 0 && start + steps <= time && outs.size(1) == batch && block.size(2) == 4 * hidden &&
                  acts.sizes() == at::IntArrayRef({ring ? 1 : time, batch, 4 * hidden}) &&
                  cells.sizes() == at::IntArrayRef({ring ? 2 : time + 1, batch, hidden}) &&
                  tanh_cells.sizes() == at::IntArrayRef({ring ? 1 : time, batch, hidden}) &&
                  pre.sizes() == at::IntArrayRef({batch, 4 * hidden}),
              "lstm_forward_steps: the chunk or a buffer does not match the outputs' shape ", outs.sizes());
  const bool nesterov = velocity.has_value();
  Tensor k;
  if (nesterov) {
    check_buffer(*velocity, "velocity", block);
    TORCH_CHECK(coefficient.has_value() && velocity->sizes() == pre.sizes(),
                "lstm_forward_steps: nesterov takes a coefficient and a (B, 4H) velocity");
    k = coefficient->to(block.scalar_type()).contiguous();
    TORCH_CHECK(k.dim() == 2 && k.size(0) == outs.size(0) && (k.size(1) == 1 || k.size(1) == batch),
                "lstm_forward_steps: the coefficient must be (T, 1) or (T, B)");
  }
  Tensor h = h_prev;
  AT_DISPATCH_FLOATING_TYPES(block.scalar_type(), "lstm_forward_steps", [&] {
    const scalar_t* kp = nesterov ? k.const_data_ptr<scalar_t>() : nullptr;
    const int64_t k_columns = nesterov ? k.size(1) : 1;
    scalar_t* vp = nesterov ? velocity->mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t step = batch * hidden;
    scalar_t* out = outs.mutable_data_ptr<scalar_t>();
    scalar_t* act = acts.mutable_data_ptr<scalar_t>();
    scalar_t* cell = cells.mutable_data_ptr<scalar_t>();
    scalar_t* tanh_cell = tanh_cells.mutable_data_ptr<scalar_t>();
    const scalar_t* p = pre.const_data_ptr<scalar_t>();
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = start + s;
      at::addmm_out(const_cast<Tensor&>(pre), block.select(0, s), h, weight_t);
      const int64_t kept = ring ? 0 : t, before = ring ? t % 2 : t, after = ring ? (t + 1) % 2 : t + 1;
      forward_step<scalar_t>(p, vp, kp, k_columns, t, act + kept * 4 * step, cell + before * step,
                             cell + after * step, tanh_cell + kept * step, out + t * step, batch, hidden);
      h = outs.select(0, t);
    }
  });
}

// Steps stop-1 down to start of the backward. ``dh``, ``dc`` (B, H): the gradients reaching
// h_{stop-1} and c_{stop-1} on entry, h_{start-1} and c_{start-1} on return. Writes the
// gradient of each step's pre-activation (nesterov: of v_t) into ``d_pre`` (T, B, 4H).
// ``weight``: U (4H, H). Nesterov: ``coefficient`` and ``passed`` (B, 4H), the gradient
// reaching v_{stop-1} from later steps on entry, v_{start-1} on return.
void lstm_backward_steps(const Tensor& acts, const Tensor& cells, const Tensor& tanh_cells, const Tensor& weight,
                         const Tensor& grad_out, const Tensor& d_pre, const Tensor& dh, const Tensor& dc,
                         int64_t start, int64_t stop, const std::optional<Tensor>& coefficient,
                         const std::optional<Tensor>& passed) {
  const int64_t batch = acts.size(1);
  const int64_t gates = acts.size(2);
  const int64_t hidden = gates / 4;
  for (const auto& [tensor, name] : {std::pair{acts, "acts"}, {cells, "cells"}, {tanh_cells, "tanh_cells"},
                                     {d_pre, "d_pre"}, {dh, "dh"}, {dc, "dc"}}) {
    check_buffer(tensor, name, acts);
  }
  const int64_t time = acts.size(0);
  TORCH_CHECK(0 <= start && start <= stop && stop <= time &&
                  cells.sizes() == at::IntArrayRef({time + 1, batch, hidden}) &&
                  tanh_cells.sizes() == at::IntArrayRef({time, batch, hidden}) && d_pre.sizes() == acts.sizes() &&
                  dh.sizes() == at::IntArrayRef({batch, hidden}) && dc.sizes() == dh.sizes() &&
                  grad_out.sizes() == tanh_cells.sizes() && weight.sizes() == at::IntArrayRef({gates, hidden}),
              "lstm_backward_steps: the steps or a buffer do not match the activations' shape ", acts.sizes());
  const bool nesterov = passed.has_value();
  Tensor k;
  if (nesterov) {
    check_buffer(*passed, "passed", acts);
    TORCH_CHECK(coefficient.has_value() && passed->sizes() == at::IntArrayRef({batch, gates}),
                "lstm_backward_steps: nesterov takes a coefficient and a (B, 4H) gradient of the velocity");
    k = coefficient->to(acts.scalar_type()).contiguous();
    TORCH_CHECK(k.dim() == 2 && k.size(0) == time && (k.size(1) == 1 || k.size(1) == batch),
                "lstm_backward_steps: the coefficient must be (T, 1) or (T, B)");
  }
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "lstm_backward_steps", [&] {
    const scalar_t* kp = nesterov ? k.const_data_ptr<scalar_t>() : nullptr;
    const int64_t k_columns = nesterov ? k.size(1) : 1;
    scalar_t* pp = nesterov ? passed->mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dhp = dh.mutable_data_ptr<scalar_t>();
    scalar_t* dcp = dc.mutable_data_ptr<scalar_t>();
    const int64_t step = batch * hidden;
    for (int64_t t = stop - 1; t >= start; --t) {
      const scalar_t* a = acts.const_data_ptr<scalar_t>() + t * gates * batch;
      const scalar_t* cprev = cells.const_data_ptr<scalar_t>() + t * step;
      const scalar_t* tc = tanh_cells.const_data_ptr<scalar_t>() + t * step;
      scalar_t* d = d_pre.mutable_data_ptr<scalar_t>() + t * gates * batch;
      for_rows(batch, gates, [&](int64_t b) {
        const scalar_t* ab = a + b * gates;
        scalar_t* db = d + b * gates;
        for (int64_t j = 0; j < hidden; ++j) {
          const int64_t at = b * hidden + j;
          const scalar_t i = ab[j], f = ab[hidden + j], g = ab[2 * hidden + j], o = ab[3 * hidden + j];
          const scalar_t th = tc[at];
          const scalar_t dhv = dhp[at];
          const scalar_t dcv = dcp[at] + dhv * (o - o * th * th);
          db[j] = dcv * g * (i - i * i);
          db[hidden + j] = dcv * cprev[at] * (f - f * f);
          db[2 * hidden + j] = dcv * (i - i * g * g);
          db[3 * hidden + j] = dhv * th * (o - o * o);
          dcp[at] = dcv * f;
        }
        if (nesterov) {                    // d(pre_t) -> dv_t = (1 + c_t) d(pre_t) + (what reached v_t from t+1)
          const scalar_t kt = coefficient_at(kp, k_columns, t, b);
          scalar_t* pb = pp + b * gates;
          for (int64_t j = 0; j < gates; ++j) {
            const scalar_t dp = db[j];
            db[j] = pb[j] + dp * (scalar_t(1) + kt);
            pb[j] = -kt * dp;
          }
        }
      });
      Tensor d_t = d_pre.select(0, t);
      if (t > 0) {
        at::addmm_out(const_cast<Tensor&>(dh), grad_out.select(0, t - 1), d_t, weight);
      } else {
        at::mm_out(const_cast<Tensor&>(dh), d_t, weight);
      }
    }
  });
}


// Adam's settings in the data's dtype, and one step of its states (RMSProp: not ``moving``).
template <typename scalar_t>
struct AdamStep {
  scalar_t mu, s, beta, rest, eps;
  bool moving;
  AdamStep(const Tensor& momentum, const Tensor& step_size, double beta_, double eps_, bool moving_)
      : mu(moving_ ? momentum.item<scalar_t>() : scalar_t(0)), s(step_size.item<scalar_t>()),
        beta(static_cast<scalar_t>(beta_)), rest(static_cast<scalar_t>(1.0 - beta_)),
        eps(static_cast<scalar_t>(eps_)), moving(moving_) {}
  scalar_t velocity(scalar_t x, scalar_t previous) const { return moving ? x * s + previous * mu : x * s; }
  scalar_t moment(scalar_t x, scalar_t previous) const { return x * x * rest + previous * beta; }
};

// Adam's state over a chunk of L steps (scan.AdamChunks), for every channel of u (L, B, G):
//   v_t = mu v_{t-1} + s u_t   (RMSProp, not ``moving``: v_t = s u_t)
//   m_t = beta m_{t-1} + (1 - beta) u_t^2,   d_t = v_t / sqrt(m_t + eps)
// From the entering state (v_prev, m_prev) it writes d into ``out`` and the leaving state into
// (v_next, m_next).
void adam_chunk_forward(const Tensor& u_in, const Tensor& v_prev_in, const Tensor& m_prev_in, const Tensor& v_next,
                        const Tensor& m_next, const Tensor& out, const Tensor& momentum, const Tensor& step_size,
                        double beta, double eps, bool moving) {
  const Tensor u = u_in.contiguous();
  const Tensor v_prev = v_prev_in.contiguous();
  const Tensor m_prev = m_prev_in.contiguous();
  const int64_t steps = u.size(0);
  const int64_t n = steps > 0 ? u.numel() / steps : 0;
  for (const auto& [tensor, name] : {std::pair{v_next, "v_next"}, {m_next, "m_next"}, {out, "out"}}) {
    check_buffer(tensor, name, u);
  }
  TORCH_CHECK(out.sizes() == u.sizes() && v_prev.numel() == n && m_prev.numel() == n && v_next.numel() == n &&
                  m_next.numel() == n, "adam_chunk_forward: the states must have the size of one step of u");
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "adam_chunk_forward", [&] {
    const AdamStep<scalar_t> adam(momentum, step_size, beta, eps, moving);
    const scalar_t* up = u.const_data_ptr<scalar_t>();
    scalar_t* dp = out.mutable_data_ptr<scalar_t>();
    scalar_t* v = v_next.mutable_data_ptr<scalar_t>();
    scalar_t* m = m_next.mutable_data_ptr<scalar_t>();
    std::copy_n(v_prev.const_data_ptr<scalar_t>(), n, v);
    std::copy_n(m_prev.const_data_ptr<scalar_t>(), n, m);
    // each channel is its own recurrence: blocks of channels on torch's threads, time inside
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, steps));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = 0; t < steps; ++t) {
        const scalar_t* ut = up + t * n;
        scalar_t* dt = dp + t * n;
        for (int64_t j = begin; j < end; ++j) {
          const scalar_t vj = adam.velocity(ut[j], v[j]);
          const scalar_t mj = adam.moment(ut[j], m[j]);
          v[j] = vj;
          m[j] = mj;
          dt[j] = vj / std::sqrt(mj + adam.eps);
        }
      }
    });
  });
}

// The adjoint over the same chunk, backwards in time, from the entering state (the chunk's
// states are recomputed). ``grad``: dL/dd of its steps; ``to_v``, ``to_h``: what reaches v and
// (as Hm = -2 dL/dm) m of its last step from later steps, already multiplied by mu and beta:
//   Gv_t = dd_t / q_t + mu Gv_{t+1},   Hm_t = dd_t v_t / (q_t q_t^2) + beta Hm_{t+1}
//   du_t = s Gv_t - (1 - beta) u_t Hm_t          (q_t = sqrt(m_t + eps))
// Writes du into ``out`` (which may be ``grad``) and returns [mu Gv_0, beta Hm_0, dL/dmu,
// dL/ds] (the sums over the chunk, 0-d; zero where not ``need_mu``/``need_s``).
std::vector<Tensor> adam_chunk_backward(const Tensor& u_in, const Tensor& v_prev_in, const Tensor& m_prev_in,
                                        const Tensor& grad_in, const Tensor& out, const Tensor& to_v_in,
                                        const Tensor& to_h_in, const Tensor& momentum, const Tensor& step_size,
                                        double beta, double eps, bool moving, bool need_mu, bool need_s) {
  const Tensor u = u_in.contiguous();
  const Tensor v_prev = v_prev_in.contiguous();
  const Tensor m_prev = m_prev_in.contiguous();
  const Tensor grad = grad_in.contiguous();
  const int64_t steps = u.size(0);
  const int64_t n = steps > 0 ? u.numel() / steps : 0;
  check_buffer(out, "out", u);
  TORCH_CHECK(out.sizes() == u.sizes() && grad.sizes() == u.sizes() && v_prev.numel() == n && m_prev.numel() == n &&
                  to_v_in.numel() == n && to_h_in.numel() == n,
              "adam_chunk_backward: the gradients and states must match u and one step of it");
  Tensor to_v = to_v_in.to(u.scalar_type()).contiguous().clone();
  Tensor to_h = to_h_in.to(u.scalar_type()).contiguous().clone();
  Tensor d_mu = at::zeros({}, u.options());
  Tensor d_s = at::zeros({}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "adam_chunk_backward", [&] {
    const AdamStep<scalar_t> adam(momentum, step_size, beta, eps, moving);
    const scalar_t* up = u.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    Tensor states = at::empty({2, steps, n}, u.options());     // the chunk's v_t and m_t, recomputed
    scalar_t* vs = states.mutable_data_ptr<scalar_t>();
    scalar_t* ms = vs + steps * n;
    const scalar_t* vp = v_prev.const_data_ptr<scalar_t>();
    const scalar_t* mp = m_prev.const_data_ptr<scalar_t>();
    scalar_t* cv = to_v.mutable_data_ptr<scalar_t>();
    scalar_t* ch = to_h.mutable_data_ptr<scalar_t>();
    // each channel is its own recurrence: fixed blocks of channels (on torch's threads), each
    // with its own partial sums of dL/dmu and dL/ds, added in block order
    const int64_t block = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, steps));
    const int64_t blocks = (n + block - 1) / block;
    std::vector<double> partial_mu(blocks, 0.0), partial_s(blocks, 0.0);
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        const int64_t begin = k * block, end = std::min(n, begin + block);
        for (int64_t t = 0; t < steps; ++t) {
          const scalar_t* ut = up + t * n;
          const scalar_t* vl = t == 0 ? vp : vs + (t - 1) * n;
          const scalar_t* ml = t == 0 ? mp : ms + (t - 1) * n;
          scalar_t* vt = vs + t * n;
          scalar_t* mt = ms + t * n;
          for (int64_t j = begin; j < end; ++j) {
            vt[j] = adam.velocity(ut[j], vl[j]);
            mt[j] = adam.moment(ut[j], ml[j]);
          }
        }
        double sum_mu = 0.0, sum_s = 0.0;
        for (int64_t t = steps - 1; t >= 0; --t) {
          const scalar_t* ut = up + t * n;
          const scalar_t* gt = gp + t * n;
          const scalar_t* vt = vs + t * n;
          const scalar_t* vl = t == 0 ? vp : vs + (t - 1) * n;
          const scalar_t* mt = ms + t * n;
          scalar_t* ot = op + t * n;
          const auto step = [&](int64_t j) {       // dL/du_t, and what reaches step t - 1: gv
            const scalar_t q2 = mt[j] + adam.eps;
            const scalar_t raw = gt[j] / std::sqrt(q2);
            const scalar_t gv = raw + cv[j];
            const scalar_t hm = raw * vt[j] / q2 + ch[j];
            ot[j] = gv * adam.s - hm * ut[j] * adam.rest;
            cv[j] = moving ? gv * adam.mu : scalar_t(0);
            ch[j] = hm * adam.beta;
            return gv;
          };
          if (need_s || need_mu) {                // the sums in channel order: one channel at a time
            for (int64_t j = begin; j < end; ++j) {
              const scalar_t x = ut[j], previous = vl[j];
              const scalar_t gv = step(j);
              if (need_s) sum_s += static_cast<double>(gv) * x;
              if (need_mu) sum_mu += static_cast<double>(gv) * previous;
            }
          } else {                                 // channels independent: vectorized
            _Pragma("GCC ivdep")
            for (int64_t j = begin; j < end; ++j) {
              step(j);
            }
          }
        }
        partial_mu[k] = sum_mu;
        partial_s[k] = sum_s;
      }
    });
    double sum_mu = 0.0, sum_s = 0.0;
    for (int64_t k = 0; k < blocks; ++k) {
      sum_mu += partial_mu[k];
      sum_s += partial_s[k];
    }
    d_mu.fill_(sum_mu);
    d_s.fill_(sum_s);
  });
  return {to_v, to_h, d_mu, d_s};
}

}  // namespace

TORCH_LIBRARY(momentumrnn_cpu, m) {
  m.def("lstm_forward_steps(Tensor block, Tensor h_prev, Tensor weight_t, Tensor(a!) outs, Tensor(b!) acts, "
        "Tensor(c!) cells, Tensor(d!) tanh_cells, Tensor(e!) pre, int start, Tensor? coefficient, "
        "Tensor(f!)? velocity) -> ()");
  m.def("lstm_backward_steps(Tensor acts, Tensor cells, Tensor tanh_cells, Tensor weight, Tensor grad_out, "
        "Tensor(a!) d_pre, Tensor(b!) dh, Tensor(c!) dc, int start, int stop, Tensor? coefficient, "
        "Tensor(d!)? passed) -> ()");
  m.def("adam_chunk_forward(Tensor u, Tensor v_prev, Tensor m_prev, Tensor(a!) v_next, Tensor(b!) m_next, "
        "Tensor(c!) out, Tensor momentum, Tensor step_size, float beta, float eps, bool moving) -> ()");
  m.def("adam_chunk_backward(Tensor u, Tensor v_prev, Tensor m_prev, Tensor grad, Tensor(a!) out, Tensor to_v, "
        "Tensor to_h, Tensor momentum, Tensor step_size, float beta, float eps, bool moving, bool need_mu, "
        "bool need_s) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(momentumrnn_cpu, CPU, m) {
  m.impl("lstm_forward_steps", &lstm_forward_steps);
  m.impl("lstm_backward_steps", &lstm_backward_steps);
  m.impl("adam_chunk_forward", &adam_chunk_forward);
  m.impl("adam_chunk_backward", &adam_chunk_backward);
}
