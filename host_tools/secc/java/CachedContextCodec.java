package v2g.exi;

import com.siemens.ct.exi.main.cmd.AbstractEXICodec;
import com.siemens.ct.exi.main.cmd.BuiltInSchema;
import com.siemens.ct.exi.main.cmd.EXICodec;
import java.lang.reflect.Field;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import javax.xml.bind.Marshaller;
import javax.xml.bind.Unmarshaller;

/**
 * The iso15118 package's EXI codec (EXICodec in its jar) with one change: the JAXB context,
 * marshaller and unmarshaller of each schema are built once and kept. The stock codec builds
 * a new JAXBContext for every message it encodes or decodes, which is most of its time per
 * message (tens of ms, hundreds on a busy machine). The marshallers are used from one thread
 * only (py4j serialises the SECC's calls, and the codec's own methods are synchronized), and
 * the codec sets and restores the properties it changes on them around each use.
 */
public final class CachedContextCodec extends AbstractEXICodec {
    private static final String[][] NAMESPACES = {
        {"AppProtocolNS", "AppProtocol"}, {"MsgDefNS", "ISO15118_2"},
        {"CommonMessagesNS", "ISO15118_20_V2G_CI_CommonMessages"}, {"ACNS", "ISO15118_20_V2G_CI_AC"},
        {"DCNS", "ISO15118_20_V2G_CI_DC"}, {"WPTNS", "ISO15118_20_V2G_CI_WPT"},
        {"ACDPNS", "ISO15118_20_V2G_CI_ACDP"}, {"XMLDSigNS", "XSDCore"},
        {"DINSpec_70121", "DINSpec_70121"},
    };

    private final Map<String, BuiltInSchema> schemas = new HashMap<>();
    // set in setJaxbContext: the base constructor calls it before this class's fields exist
    private Map<List<Class<?>>, Object[]> contexts;
    private static final Field CONTEXT_FIELD = contextField();
    private final float version;

    public CachedContextCodec() throws ReflectiveOperationException {
        super();
        // the namespace -> schema table is the stock codec's (private there): read, not copied
        for (String[] ns : NAMESPACES) {
            Field f = EXICodec.class.getDeclaredField(ns[0]);
            f.setAccessible(true);
            schemas.put((String) f.get(null), BuiltInSchema.valueOf(ns[1]));
        }
        Field v = EXICodec.class.getDeclaredField("version");
        v.setAccessible(true);
        version = v.getFloat(null);
    }

    private static Field contextField() {
        try {
            Field f = AbstractEXICodec.class.getDeclaredField("jaxbContext");
            f.setAccessible(true);
            return f;
        } catch (NoSuchFieldException e) {
            throw new IllegalStateException(e);
        }
    }

    @Override
    protected synchronized void setJaxbContext(Class... classes) {
        if (contexts == null) {
            contexts = new HashMap<>();
        }
        List<Class<?>> key = Arrays.asList(classes);
        Object[] kept = contexts.get(key);
        try {
            if (kept == null) {
                super.setJaxbContext(classes);
                contexts.put(key, new Object[] {CONTEXT_FIELD.get(this), getMarshaller(), getUnmarshaller()});
                return;
            }
            CONTEXT_FIELD.set(this, kept[0]);
        } catch (IllegalAccessException e) {
            throw new IllegalStateException(e);
        }
        setMarshaller((Marshaller) kept[1]);
        setUnmarshaller((Unmarshaller) kept[2]);
    }

    private BuiltInSchema schema(String namespace) {
        BuiltInSchema s = schemas.get(namespace);
        if (s == null) {
            throw new IllegalArgumentException("no EXI schema for namespace " + namespace);
        }
        return s;
    }

    public byte[] encode(String message, String namespace) {
        resetLastEncodingError();
        try {
            return encode_json(message, schema(namespace));
        } catch (Exception e) {
            setLastEncodingError(e.getClass().getSimpleName() + ": " + e.getMessage());
            return null;
        }
    }

    public String decode(byte[] exi, String namespace) {
        try {
            return decode_exi(exi, schema(namespace));
        } catch (IllegalArgumentException e) {
            setLastDecodingError(e.getMessage());
            return null;
        }
    }

    public String get_last_encoding_error() {
        return lastEncodingError;
    }

    public String get_last_decoding_error() {
        return lastDecodingError;
    }

    @Override
    public float get_version() {
        return version;
    }
}
