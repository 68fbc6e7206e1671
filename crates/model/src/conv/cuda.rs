//! The convolution's CUDA kernels (with the `cuda` feature). With the
//! `cudnn` feature, [`ConvGemm`]'s `cuda_fwd` is `cudnnConvolutionForward`
//! and its backward `cudnnConvolutionBackwardData` (only when autograd
//! tracks `x`) and `cudnnConvolutionBackwardFilter`, through cudarc's safe
//! cuDNN API (`../shared/GPU-DESIGN.md` §3.2). Each shape's descriptors and
//! algorithm are made once and cached per thread and device (a plan,
//! [`plan::Key`]), with one grow-only workspace per device (all work is on
//! the device's one stream). The algorithm is cuDNN's heuristic choice;
//! `KSEG_CUDNN_BENCHMARK=1` times every candidate on the plan's first use
//! and keeps the fastest; `KSEG_CUDNN_DETERMINISTIC=1` drops the
//! non-deterministic ones (bwd-data ALGO_0, bwd-filter ALGO_0 and ALGO_3);
//! `KSEG_CUDNN_LOG=1` prints each new plan. The math type is FMA (strict
//! FP32) unless [`crate::tf32`] allows TF32. Descriptors are N-d
//! (`create_nd_tensor`, `create_nd_filter`, `create_convnd`), so 3-D is a
//! matter of the key. A bias is added with candle's `broadcast_add` after
//! the op (its gradient is candle's sum over `(0, 2, 3)` of `dy`).
//! Without `cudnn`, [`applies`] is false and a CUDA convolution is
//! candle's `conv2d`. Like `host.rs`, this file may hold `unsafe` (cuDNN
//! launches, uninitialised device buffers), each block with a
//! `// SAFETY:` comment.

use candle_core::{Result, Tensor};
use candle_nn::Conv2dConfig;

use super::op::ConvGemm;
#[cfg(feature = "cudnn")]
use super::plan;

#[cfg(feature = "cudnn")]
pub(super) use dnn::{applies, bias_grad, forward, grads};
#[cfg(not(feature = "cudnn"))]
pub(super) use stub::{applies, bias_grad, forward, grads};

/// `y = W ⋆ x [+ bias]` as [`ConvGemm`] (where [`applies`]), the bias
/// broadcast-added after the op.
pub(super) fn conv(
    x: &Tensor,
    wt: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
) -> Result<Tensor> {
    let op = ConvGemm {
        stride: cfg.stride,
        pad: cfg.padding,
    };
    let y = op.apply(x, wt, None)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// Without cuDNN: no kernels, [`applies`] is false.
#[cfg(not(feature = "cudnn"))]
mod stub {
    use candle_core::{CudaStorage, Layout, Result, Shape, Tensor, bail};
    use candle_nn::Conv2dConfig;

    use super::ConvGemm;

    /// Never without the `cudnn` feature.
    pub(crate) fn applies(
        _x: &Tensor,
        _wt: &Tensor,
        _bias: Option<&Tensor>,
        _cfg: &Conv2dConfig,
    ) -> bool {
        false
    }

    /// [`ConvGemm`]'s forward on CUDA: none without cuDNN.
    pub(crate) fn forward(
        _op: &ConvGemm,
        _xs: &CudaStorage,
        _xl: &Layout,
        _ws: &CudaStorage,
        _wl: &Layout,
        _bias: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        bail!("conv: no CUDA kernel without the cudnn feature")
    }

    /// [`ConvGemm`]'s `(dx, dW)` on CUDA: none without cuDNN.
    pub(crate) fn grads(
        _op: &ConvGemm,
        _x: &Tensor,
        _wt: &Tensor,
        _dy: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor)> {
        bail!("conv: no CUDA backward without the cudnn feature")
    }

    /// The bias gradient on CUDA: none without cuDNN.
    pub(crate) fn bias_grad(_dy: &Tensor, _bias: &Tensor) -> Result<Tensor> {
        bail!("conv: no CUDA bias gradient without the cudnn feature")
    }
}

#[cfg(feature = "cudnn")]
mod dnn {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::collections::hash_map::Entry;
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::cudnn::{
        ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
        TensorDescriptor, sys,
    };
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, sys as drv};
    use candle_core::cuda_backend::{CudaDevice, DeviceId};
    use candle_core::{
        CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail,
    };
    use candle_nn::Conv2dConfig;

    use super::ConvGemm;
    use super::plan::{self, Direction, GrowOnly, Key, Math, Policy, Record};
    use crate::conv::cpu::Dims;

    use sys::cudnnConvolutionBwdDataAlgo_t as B;
    use sys::cudnnConvolutionBwdFilterAlgo_t as W;
    use sys::cudnnConvolutionFwdAlgo_t as F;

    /// Forward candidates (all deterministic), in preference order.
    const FWD: [(F, bool); 8] = [
        (F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, true),
        (F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, true),
        (F::CUDNN_CONVOLUTION_FWD_ALGO_GEMM, true),
        (F::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, true),
        (F::CUDNN_CONVOLUTION_FWD_ALGO_FFT, true),
        (F::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING, true),
        (F::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD, true),
        (F::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, true),
    ];
    /// Backward-data candidates (ALGO_0 is not deterministic).
    const BWD_DATA: [(B, bool); 6] = [
        (B::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, true),
        (B::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, false),
        (B::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, true),
        (B::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING, true),
        (B::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD, true),
        (B::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED, true),
    ];
    /// Backward-filter candidates (ALGO_0 and ALGO_3 are not deterministic).
    const BWD_FILTER: [(W, bool); 7] = [
        (W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, true),
        (W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, false),
        (W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, false),
        (W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, true),
        (W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING, true),
        (W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD, true),
        (W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, true),
    ];

    /// One shape's descriptors and chosen algorithm (an index into the
    /// direction's candidate list).
    struct Plan {
        conv: ConvDescriptor<f32>,
        x: TensorDescriptor<f32>,
        w: FilterDescriptor<f32>,
        y: TensorDescriptor<f32>,
        algo: usize,
        ws_bytes: usize,
    }

    impl Plan {
        fn fwd(&self) -> ConvForward<'_, f32, f32, f32> {
            ConvForward {
                conv: &self.conv,
                x: &self.x,
                w: &self.w,
                y: &self.y,
            }
        }

        fn bwd_data(&self) -> ConvBackwardData<'_, f32, f32, f32> {
            ConvBackwardData {
                conv: &self.conv,
                dx: &self.x,
                w: &self.w,
                dy: &self.y,
            }
        }

        fn bwd_filter(&self) -> ConvBackwardFilter<'_, f32, f32, f32> {
            ConvBackwardFilter {
                conv: &self.conv,
                x: &self.x,
                dw: &self.w,
                dy: &self.y,
            }
        }
    }

    /// One device's cuDNN handle, plans and workspace.
    struct Ctx {
        cudnn: Arc<Cudnn>,
        plans: HashMap<Key, Plan>,
        ws: Option<CudaSlice<u8>>,
        grow: GrowOnly,
    }

    thread_local! {
        /// cuDNN handles are neither `Send` nor `Sync`: one per thread and device.
        static CTX: RefCell<HashMap<DeviceId, Ctx>> = RefCell::new(HashMap::new());
    }

    /// Whether the op takes this convolution: kseg's GPU ops on, f32
    /// contiguous CUDA `x` and `W` (and bias) on one device, groups 1,
    /// dilation 1, a square kernel, sizes within cuDNN's `int`.
    pub(crate) fn applies(
        x: &Tensor,
        wt: &Tensor,
        bias: Option<&Tensor>,
        cfg: &Conv2dConfig,
    ) -> bool {
        let f32_cuda = |t: &Tensor| t.device().is_cuda() && t.dtype() == DType::F32;
        let (Ok((_, c, _, _)), Ok((_, ci, k, k2))) = (x.dims4(), wt.dims4()) else {
            return false;
        };
        crate::gpu_ops()
            && f32_cuda(x)
            && f32_cuda(wt)
            && x.device().same_device(wt.device())
            && bias.is_none_or(|b| f32_cuda(b) && b.device().same_device(x.device()))
            && x.is_contiguous()
            && wt.is_contiguous()
            && cfg.groups == 1
            && cfg.dilation == 1
            && c == ci
            && k == k2
            && x.elem_count() < i32::MAX as usize
    }

    fn key(d: &Dims, dir: Direction) -> Key {
        Key {
            n: d.b,
            c: d.c,
            h: d.geo.h,
            w: d.geo.w,
            o: d.o,
            k: d.geo.k,
            stride: d.geo.stride,
            pad: d.geo.pad,
            dtype: DType::F32,
            math: Math::current(),
            dir,
        }
    }

    fn int(v: &[usize]) -> Result<Vec<i32>> {
        v.iter()
            .map(|&v| {
                i32::try_from(v).map_err(|_| candle_core::Error::Msg("conv: size past i32".into()))
            })
            .collect()
    }

    /// The plan's descriptors (algorithm not yet chosen).
    fn descriptors(cudnn: &Arc<Cudnn>, key: &Key) -> Result<Plan> {
        let (xd, yd) = (key.x_dims(), key.y_dims());
        let x = cudnn.create_nd_tensor::<f32>(&int(&xd)?, &int(&plan::strides(&xd))?)?;
        let y = cudnn.create_nd_tensor::<f32>(&int(&yd)?, &int(&plan::strides(&yd))?)?;
        let w = cudnn.create_nd_filter::<f32>(
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            &int(&key.w_dims())?,
        )?;
        let (p, s) = (key.pad as i32, key.stride as i32);
        let mut conv = cudnn.create_convnd::<f32>(
            &[p, p],
            &[s, s],
            &[1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        conv.set_math_type(match key.math {
            Math::Fma => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            Math::Tf32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        })?;
        Ok(Plan {
            conv,
            x,
            w,
            y,
            algo: 0,
            ws_bytes: 0,
        })
    }

    /// Makes the workspace at least `need` bytes (grow-only).
    fn ensure(
        ws: &mut Option<CudaSlice<u8>>,
        grow: &mut GrowOnly,
        dev: &CudaDevice,
        need: usize,
    ) -> Result<()> {
        let bytes = match grow.need(need) {
            Some(b) => b,
            None if ws.is_none() => grow.bytes,
            None => return Ok(()),
        };
        *ws = None; // free the old buffer first
        // SAFETY: the workspace is cuDNN's scratch space; it needs no
        // initial contents and is only used on the device's stream.
        *ws = Some(unsafe { dev.alloc::<u8>(bytes)? });
        Ok(())
    }

    /// A direction's launch of cuDNN: plan, algorithm, workspace.
    type LaunchFn<'a> = dyn FnMut(&Plan, usize, &mut CudaSlice<u8>) -> Result<()> + 'a;

    /// How one direction queries and launches cuDNN on a plan.
    struct Calls<'a> {
        /// Whether each candidate (by index) is deterministic.
        algos: &'a [bool],
        heuristic: &'a dyn Fn(&Plan) -> Option<usize>,
        workspace: &'a dyn Fn(&Plan, usize) -> Option<usize>,
        launch: &'a mut LaunchFn<'a>,
    }

    /// Finds (or makes) the plan for `key` on `dev` and launches it.
    fn execute(dev: &CudaDevice, key: Key, calls: Calls<'_>) -> Result<()> {
        let Calls {
            algos,
            heuristic,
            workspace,
            launch,
        } = calls;
        CTX.with(|cell| {
            let mut map = cell.borrow_mut();
            let id = dev.id();
            if let Entry::Vacant(slot) = map.entry(id) {
                slot.insert(Ctx {
                    cudnn: Cudnn::new(dev.cuda_stream())?,
                    plans: HashMap::new(),
                    ws: None,
                    grow: GrowOnly::default(),
                });
            }
            let Some(Ctx {
                cudnn,
                plans,
                ws,
                grow,
            }) = map.get_mut(&id)
            else {
                bail!("conv: no cuDNN context")
            };
            if let Entry::Vacant(slot) = plans.entry(key) {
                let mut p = descriptors(cudnn, &key)?;
                let policy = Policy::from_env();
                let mut records: Vec<Record> = algos
                    .iter()
                    .enumerate()
                    .map(|(algo, &deterministic)| Record {
                        algo,
                        time_ms: None,
                        workspace: workspace(&p, algo),
                        deterministic,
                    })
                    .collect();
                if policy.benchmark {
                    let stream = dev.cuda_stream();
                    for r in records.iter_mut() {
                        let Some(need) = r.workspace.filter(|&w| w <= plan::MAX_WORKSPACE) else {
                            continue;
                        };
                        if policy.deterministic && !r.deterministic {
                            continue;
                        }
                        ensure(ws, grow, dev, need)?;
                        let Some(buf) = ws.as_mut() else { continue };
                        // One untimed run (lazy loading), then one timed.
                        if launch(&p, r.algo, buf).is_err() {
                            continue;
                        }
                        let t0 = stream.record_event(Some(drv::CUevent_flags::CU_EVENT_DEFAULT))?;
                        let ok = launch(&p, r.algo, buf).is_ok();
                        let t1 = stream.record_event(Some(drv::CUevent_flags::CU_EVENT_DEFAULT))?;
                        if ok {
                            r.time_ms = Some(t0.elapsed_ms(&t1)?);
                        }
                    }
                }
                let Some(algo) = plan::choose(policy, heuristic(&p), &records) else {
                    bail!("conv: cuDNN has no usable algorithm for {key:?}")
                };
                p.algo = algo;
                p.ws_bytes = records[algo].workspace.unwrap_or(0);
                if std::env::var_os("KSEG_CUDNN_LOG").is_some_and(|v| v == "1") {
                    eprintln!(
                        "kseg cudnn plan {key:?}: algo #{algo}, workspace {} B, time {:?} ms, policy {policy:?}",
                        p.ws_bytes, records[algo].time_ms
                    );
                }
                slot.insert(p);
            }
            let Some(p) = plans.get(&key) else {
                bail!("conv: no cuDNN plan")
            };
            ensure(ws, grow, dev, p.ws_bytes)?;
            let Some(buf) = ws.as_mut() else {
                bail!("conv: no cuDNN workspace")
            };
            launch(p, p.algo, buf)
        })
    }

    fn dets<T>(list: &[(T, bool)]) -> Vec<bool> {
        list.iter().map(|a| a.1).collect()
    }

    /// [`ConvGemm`]'s forward on CUDA (`cudnnConvolutionForward`). The bias
    /// is added outside the op ([`super::conv`]).
    pub(crate) fn forward(
        op: &ConvGemm,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        if bias.is_some() {
            bail!("conv: the CUDA op adds its bias outside (conv::cuda::conv)")
        }
        if !xl.is_contiguous() || !wl.is_contiguous() {
            bail!("conv: cuDNN path needs contiguous input and weight")
        }
        let d = op.dims(xl, wl)?;
        let key = key(&d, Direction::Forward);
        let dev = &xs.device;
        let x = xs.as_cuda_slice::<f32>()?.slice(xl.start_offset()..);
        let w = ws.as_cuda_slice::<f32>()?.slice(wl.start_offset()..);
        let yd = key.y_dims();
        // SAFETY: cuDNN writes every element of y (β = 0) before it is read.
        let mut y = unsafe { dev.alloc::<f32>(yd.iter().product())? };
        let algos = dets(&FWD);
        execute(
            dev,
            key,
            Calls {
                algos: &algos,
                heuristic: &|p| {
                    let a = p.fwd().pick_algorithm().ok()?;
                    FWD.iter().position(|c| c.0 == a)
                },
                workspace: &|p, a| p.fwd().get_workspace_size(FWD[a].0).ok(),
                launch: &mut |p, a, buf| {
                    // SAFETY: x, w, y are f32 device buffers of the plan's
                    // descriptors' (contiguous NCHW) shapes.
                    unsafe {
                        p.fwd()
                            .launch(FWD[a].0, Some(buf), (1.0f32, 0.0f32), &x, &w, &mut y)
                    }?;
                    Ok(())
                },
            },
        )?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            Shape::from(yd.to_vec()),
        ))
    }

    /// `dx` of a convolution of an input `(·, c, h, w)`, as an op on `(dy, W)`.
    #[derive(Debug, Clone, Copy)]
    struct BwdData {
        op: ConvGemm,
        c: usize,
        h: usize,
        w: usize,
    }

    /// `dW` (kernel size `k`), as an op on `(x, dy)`.
    #[derive(Debug, Clone, Copy)]
    struct BwdFilter {
        op: ConvGemm,
        k: usize,
    }

    fn check_dy(dyl: &Layout, key: &Key) -> Result<()> {
        if !dyl.is_contiguous() || dyl.shape().dims() != key.y_dims() {
            bail!(
                "conv backward: output gradient {:?} does not fit {:?}",
                dyl.shape(),
                key.y_dims()
            )
        }
        Ok(())
    }

    impl CustomOp2 for BwdData {
        fn name(&self) -> &'static str {
            "kseg-conv-cudnn-bwd-data"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("conv: the cuDNN backward-data op is CUDA only")
        }

        fn cuda_fwd(
            &self,
            dys: &CudaStorage,
            dyl: &Layout,
            ws: &CudaStorage,
            wl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let n = dyl.shape().dims4()?.0;
            let xl = Layout::contiguous((n, self.c, self.h, self.w));
            let d = self.op.dims(&xl, wl)?;
            let key = key(&d, Direction::BackwardData);
            check_dy(dyl, &key)?;
            if !wl.is_contiguous() {
                bail!("conv backward: weight not contiguous")
            }
            let dev = &dys.device;
            let dy = dys.as_cuda_slice::<f32>()?.slice(dyl.start_offset()..);
            let w = ws.as_cuda_slice::<f32>()?.slice(wl.start_offset()..);
            // SAFETY: cuDNN writes every element of dx (β = 0).
            let mut dx = unsafe { dev.alloc::<f32>(xl.shape().elem_count())? };
            let algos = dets(&BWD_DATA);
            execute(
                dev,
                key,
                Calls {
                    algos: &algos,
                    heuristic: &|p| {
                        let a = p.bwd_data().pick_algorithm().ok()?;
                        BWD_DATA.iter().position(|c| c.0 == a)
                    },
                    workspace: &|p, a| p.bwd_data().get_workspace_size(BWD_DATA[a].0).ok(),
                    launch: &mut |p, a, buf| {
                        // SAFETY: dx, w, dy are f32 device buffers of the
                        // plan's descriptors' shapes.
                        unsafe {
                            p.bwd_data().launch(
                                BWD_DATA[a].0,
                                Some(buf),
                                (1.0f32, 0.0f32),
                                &mut dx,
                                &w,
                                &dy,
                            )
                        }?;
                        Ok(())
                    },
                },
            )?;
            Ok((
                CudaStorage::wrap_cuda_slice(dx, dev.clone()),
                xl.shape().clone(),
            ))
        }
    }

    impl CustomOp2 for BwdFilter {
        fn name(&self) -> &'static str {
            "kseg-conv-cudnn-bwd-filter"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("conv: the cuDNN backward-filter op is CUDA only")
        }

        fn cuda_fwd(
            &self,
            xs: &CudaStorage,
            xl: &Layout,
            dys: &CudaStorage,
            dyl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (c, o) = (xl.shape().dims4()?.1, dyl.shape().dims4()?.1);
            let wl = Layout::contiguous((o, c, self.k, self.k));
            let d = self.op.dims(xl, &wl)?;
            let key = key(&d, Direction::BackwardFilter);
            check_dy(dyl, &key)?;
            if !xl.is_contiguous() {
                bail!("conv backward: input not contiguous")
            }
            let dev = &xs.device;
            let x = xs.as_cuda_slice::<f32>()?.slice(xl.start_offset()..);
            let dy = dys.as_cuda_slice::<f32>()?.slice(dyl.start_offset()..);
            // SAFETY: cuDNN writes every element of dW (β = 0).
            let mut dw = unsafe { dev.alloc::<f32>(wl.shape().elem_count())? };
            let algos = dets(&BWD_FILTER);
            execute(
                dev,
                key,
                Calls {
                    algos: &algos,
                    heuristic: &|p| {
                        let a = p.bwd_filter().pick_algorithm().ok()?;
                        BWD_FILTER.iter().position(|c| c.0 == a)
                    },
                    workspace: &|p, a| p.bwd_filter().get_workspace_size(BWD_FILTER[a].0).ok(),
                    launch: &mut |p, a, buf| {
                        // SAFETY: x, dW, dy are f32 device buffers of the
                        // plan's descriptors' shapes.
                        unsafe {
                            p.bwd_filter().launch(
                                BWD_FILTER[a].0,
                                Some(buf),
                                (1.0f32, 0.0f32),
                                &x,
                                &mut dw,
                                &dy,
                            )
                        }?;
                        Ok(())
                    },
                },
            )?;
            Ok((
                CudaStorage::wrap_cuda_slice(dw, dev.clone()),
                wl.shape().clone(),
            ))
        }
    }

    /// [`ConvGemm`]'s `(dx, dW)` on CUDA: dx only when autograd tracks `x`
    /// (as on the CPU).
    pub(crate) fn grads(
        op: &ConvGemm,
        x: &Tensor,
        wt: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor)> {
        let want_dx = x.track_op();
        let (x, wt, dy) = (x.contiguous()?, wt.contiguous()?, dy.contiguous()?);
        let (_, c, h, w) = x.dims4()?;
        let k = wt.dim(2)?;
        let dw = x.apply_op2_no_bwd(&dy, &BwdFilter { op: *op, k })?;
        let dx = if want_dx {
            Some(dy.apply_op2_no_bwd(&wt, &BwdData { op: *op, c, h, w })?)
        } else {
            None
        };
        Ok((dx, dw))
    }

    /// The bias gradient on CUDA: the sum of `dy` over `(0, 2, 3)`.
    pub(crate) fn bias_grad(dy: &Tensor, bias: &Tensor) -> Result<Tensor> {
        dy.sum((0, 2, 3))?.reshape(bias.shape())
    }
}

/// Compared with the CPU op (CUDA build; skipped without a GPU).
#[cfg(all(test, feature = "cudnn"))]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::Conv2dConfig;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let b = b.to_device(&Device::Cpu).unwrap();
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn cudnn_matches_the_cpu_op() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("no CUDA device: skipped");
            return;
        };
        crate::set_gpu_ops(true);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for b in [1, 3] {
            for (c, o, k, stride, pad, bias, track_x) in [
                (3, 4, 3, 1, 1, false, true),
                (3, 4, 3, 2, 1, true, true),
                (5, 2, 1, 1, 0, true, true),
                (2, 3, 1, 2, 0, false, true),
                (3, 4, 3, 1, 1, true, false),
            ] {
                let (h, w) = (15, 17);
                let cfg = Conv2dConfig {
                    padding: pad,
                    stride,
                    ..Default::default()
                };
                let xv = randn(&[b, c, h, w], &mut rng);
                let wv = randn(&[o, c, k, k], &mut rng);
                let bv = randn(&[o], &mut rng);
                let run = |dev: &Device| {
                    let x = Var::from_vec(xv.clone(), (b, c, h, w), dev).unwrap();
                    let wt = Var::from_vec(wv.clone(), (o, c, k, k), dev).unwrap();
                    let bs = Var::from_vec(bv.clone(), o, dev).unwrap();
                    let xin = if track_x {
                        x.as_tensor().clone()
                    } else {
                        x.as_tensor().detach()
                    };
                    let bias_t = bias.then(|| bs.as_tensor().clone());
                    let y = if dev.is_cuda() {
                        assert!(super::applies(&xin, &wt, bias_t.as_ref(), &cfg));
                        super::conv(&xin, &wt, bias_t.as_ref(), &cfg).unwrap()
                    } else {
                        super::super::cpu::conv(&xin, &wt, bias_t.as_ref(), &cfg).unwrap()
                    };
                    let r = Tensor::arange(0f32, y.elem_count() as f32, dev)
                        .unwrap()
                        .affine(0.01, -1.0)
                        .unwrap()
                        .sin()
                        .unwrap()
                        .reshape(y.shape())
                        .unwrap();
                    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let dx = g.get(x.as_tensor()).cloned();
                    let dw = g.get(wt.as_tensor()).cloned().unwrap();
                    let db = g.get(bs.as_tensor()).cloned();
                    (y, dx, dw, db)
                };
                let (yg, dxg, dwg, dbg) = run(&gpu);
                let (yc, dxc, dwc, dbc) = run(&Device::Cpu);
                let what =
                    format!("b{b} c{c} o{o} k{k} s{stride} p{pad} bias {bias} track {track_x}");
                assert_eq!(yg.dims(), yc.dims(), "{what}");
                assert!(max_diff(&yg, &yc) < 1e-4, "y {what}");
                assert!(max_diff(&dwg, &dwc) < 1e-3, "dw {what}");
                assert_eq!(dxg.is_some(), track_x, "dx presence {what}");
                assert_eq!(dxc.is_some(), track_x, "cpu dx presence {what}");
                if let (Some(a), Some(c)) = (&dxg, &dxc) {
                    assert!(max_diff(a, c) < 1e-4, "dx {what}");
                }
                assert_eq!(dbg.is_some(), bias, "{what}");
                if let (Some(a), Some(c)) = (&dbg, &dbc) {
                    assert!(max_diff(a, c) < 1e-3, "db {what}");
                }
            }
        }
        crate::set_gpu_ops(false);
    }
}
